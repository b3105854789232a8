"""Occupancy -> serialized ``visualization_msgs/MarkerArray`` (a DELETEALL marker, then one CUBE_LIST per class).

The MarkerArray of a large grid is the expensive message: rclpy converts every ``geometry_msgs/Point`` of a
CUBE_LIST one Python object at a time (about 1 us per point). :func:`serialize_occupancy_markers` therefore
writes the serialized (CDR) message directly: rclpy serializes a template holding one unique sentinel point per
class marker, and the voxel centres (one contiguous float64 block per class) are spliced in place of the
sentinels. A point is 24 bytes, so the bytes after each splice keep their alignment and the result is byte for
byte what rclpy serializes for the same message built point by point, alignment padding aside (Fast CDR leaves
those bytes unwritten; ``test_ros_conversions`` compares every other byte).
Publishers accept these bytes directly (``publisher.publish(bytes)``), subscribers receive an ordinary MarkerArray.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point
from rclpy.serialization import serialize_message
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs.base import to_time
from occle_ros.msgs.voxels import OccupiedVoxels, occupied_voxels, publish_mask

_SENTINEL = np.array([1.2345678901234567e-301, 0.0, -7.654321987654321e-299])


def _sentinel(k: int) -> np.ndarray:
    s = _SENTINEL.copy()
    s[1] = 1000.0 + k  # unique per class marker
    return s


def _marker_template(
    voxels: OccupiedVoxels,
    classes: ClassTable,
    grid: VoxelGrid,
    frame_id: str,
    stamp: Time,
    alpha: float,
    ns_prefix: str,
) -> MarkerArray:
    """MarkerArray: DELETEALL, then one CUBE_LIST per class holding only its sentinel point."""
    header = Header(frame_id=frame_id, stamp=stamp)
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    size = float(grid.voxel_size)
    for k in voxels.class_ids.tolist():
        rgb = classes.colors[k] / 255.0 if k < classes.num_classes else np.ones(3)
        m = Marker(header=header, ns=ns_prefix + classes.names[k], id=int(k), type=Marker.CUBE_LIST)
        m.action = Marker.ADD
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = size
        m.color = ColorRGBA(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(alpha))
        m.lifetime = Duration()
        s = _sentinel(k)
        m.points = [Point(x=float(s[0]), y=float(s[1]), z=float(s[2]))]
        markers.append(m)
    return MarkerArray(markers=markers)


def serialize_occupancy_markers(
    labels: np.ndarray,
    grid: VoxelGrid,
    classes: ClassTable,
    frame_id: str,
    stamp: Time | int | None = None,
    alpha: float = 1.0,
    publish: Iterable[str | int] | None = None,
    ns_prefix: str = "",
    voxels: OccupiedVoxels | None = None,
) -> bytes:
    """Serialized (CDR) ``visualization_msgs/MarkerArray`` of an occupancy grid, ready for ``publish(bytes)``.

    The array holds a DELETEALL marker (stale cubes vanish), then one CUBE_LIST marker per class present:
    namespace = class name, id = class id, colour = class colour with ``alpha``, scale = voxel size,
    points = voxel centres in the grid's (LiDAR) frame.

    Args:
        labels: (X, Y, Z) uint8 class labels of ``grid``.
        publish: class names/ids to publish (default every class but the empty one).
        voxels: precomputed :func:`occupied_voxels` (to share the work with the voxel cloud).
    """
    if voxels is None:
        voxels = occupied_voxels(labels, grid, publish_mask(classes, publish), classes.empty_index)
    template = serialize_message(_marker_template(voxels, classes, grid, frame_id, to_time(stamp), alpha, ns_prefix))
    little = template[1] == 1  # encapsulation header: 0x0001 = CDR little endian
    f8 = "<f8" if little else ">f8"
    u4 = "<u4" if little else ">u4"
    one = np.array([1], u4).tobytes()
    parts: list[bytes | memoryview] = []
    pos = 0
    view = memoryview(template)
    for c, k in enumerate(voxels.class_ids.tolist()):
        sentinel = _sentinel(k).astype(f8).tobytes()
        at = template.find(sentinel, pos)
        if at < 0 or template.find(sentinel, at + 1) >= 0:
            raise RuntimeError("marker template: sentinel point not found exactly once")
        # the sequence length (uint32 = 1) sits right before the point, or before 4 alignment bytes
        len_at = at - 4 if template[at - 4 : at] == one else at - 8
        if template[len_at : len_at + 4] != one:
            raise RuntimeError("marker template: points length field not found before the sentinel")
        pts = voxels.centers[voxels.bounds[c] : voxels.bounds[c + 1]]  # (n_k, 3)
        parts += [
            view[pos:len_at],
            np.array([pts.shape[0]], u4).tobytes(),
            view[len_at + 4 : at],
            np.ascontiguousarray(pts, dtype=f8).tobytes(),
        ]
        pos = at + 24
    parts.append(view[pos:])
    return b"".join(parts)
