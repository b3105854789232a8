"""Read the node's outputs back into label grids: for tests, the demo and benchmarks, not the node's path.

These iterate over message objects (a MarkerArray's points one Python object at a time): fine for checking a
result, never used per frame by the node.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs.base import ConversionError
from occle_ros.msgs.pointcloud import field_column, pointcloud2_to_array


def pointcloud2_to_occupancy(
    msg: PointCloud2, grid: VoxelGrid, empty_index: int, label_field: str = "label"
) -> np.ndarray:
    """Rebuild an (X, Y, Z) uint8 label grid from a voxel cloud of :func:`occupancy_to_pointcloud2`.

    Voxels absent from the cloud get ``empty_index``; points outside ``grid`` are ignored.
    """
    arr = pointcloud2_to_array(msg)
    names = arr.dtype.names or ()
    for f in ("x", "y", "z", label_field):
        if f not in names:
            raise ConversionError(f"voxel PointCloud2 lacks the {f!r} field (fields present: {list(names)})")
    xyz = np.stack([field_column(arr, "x"), field_column(arr, "y"), field_column(arr, "z")], axis=1).astype(np.float32)
    ijk, inside = grid.point_indices(xyz)
    out = np.full(grid.shape, empty_index, np.uint8)
    out[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = field_column(arr, label_field)[inside].astype(np.uint8)
    return out


def marker_array_to_occupancy(msg: MarkerArray, grid: VoxelGrid, classes: ClassTable) -> np.ndarray:
    """Rebuild an (X, Y, Z) uint8 label grid from a MarkerArray of :func:`serialize_occupancy_markers`.

    Class ids come from each CUBE_LIST marker's ``id``; voxels not in any marker get the empty class.
    (Iterates over the points of the message: a helper for tests and the demo, not a hot path.)
    """
    out = np.full(grid.shape, classes.empty_index, np.uint8)
    for m in msg.markers:
        if m.type != Marker.CUBE_LIST or m.action != Marker.ADD or not m.points:
            continue
        xyz = np.array([(p.x, p.y, p.z) for p in m.points], np.float32)
        ijk, _ = grid.point_indices(xyz)
        out[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = m.id
    return out
