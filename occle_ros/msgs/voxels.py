"""Occupancy (X, Y, Z) labels -> the occupied voxels grouped by class (shared by every output message) and the
voxel ``PointCloud2`` (x, y, z, rgb, label of each occupied voxel centre)."""

from __future__ import annotations

import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs.base import to_time


def publish_mask(classes: ClassTable, publish: Iterable[str | int] | None = None) -> np.ndarray:
    """(256,) bool lookup of the label values to publish: ``publish`` (names or ids), default every class but
    the empty one. The empty class and ignore labels are never published.

    Raises:
        ValueError: naming an unknown class.
    """
    lut = np.zeros(256, bool)
    if publish is None or len(list(publish)) == 0:
        lut[: classes.num_classes] = True
    else:
        for c in publish:
            if isinstance(c, str):
                if c not in classes.names:
                    raise ValueError(f"unknown class {c!r} to publish; expected names from {list(classes.names)}")
                lut[classes.names.index(c)] = True
            else:
                if not 0 <= int(c) < classes.num_classes:
                    raise ValueError(f"class id {c} to publish is outside 0..{classes.num_classes - 1}")
                lut[int(c)] = True
    lut[classes.empty_index] = False
    return lut


@dataclass
class OccupiedVoxels:
    """Occupied voxels grouped by class.

    Attributes:
        centers: (M, 3) float64 voxel centres, sorted by class (stable within a class: C order of the grid).
        labels: (M,) uint8 class of each voxel.
        class_ids: (C,) class ids present, ascending.
        bounds: (C + 1,) start offsets of each class in ``centers``.
    """

    centers: np.ndarray
    labels: np.ndarray
    class_ids: np.ndarray
    bounds: np.ndarray


def occupied_voxels(labels: np.ndarray, grid: VoxelGrid, lut: np.ndarray, empty_index: int = 0) -> OccupiedVoxels:
    """Voxels whose label is selected by ``lut`` ((256,) bool from :func:`publish_mask`), grouped by class.

    ``lut[empty_index]`` must be False (voxels equal to ``empty_index`` are skipped before the lookup).
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(grid.shape):
        raise ValueError(f"labels shape {labels.shape} does not match grid shape {grid.shape}")
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    flat = labels.reshape(-1)
    cand = np.flatnonzero(flat != empty_index)  # (M',) most voxels are free: compare first, look up after
    keep = lut[flat[cand]]
    idx = cand if keep.all() else cand[keep]  # (M,) C-order flat indices
    return grouped_voxels(idx, flat[idx], grid)


def grouped_voxels(idx: np.ndarray, lab: np.ndarray, grid: VoxelGrid) -> OccupiedVoxels:
    """:class:`OccupiedVoxels` of the voxels at C-order flat indices ``idx`` ((M,), ascending) with labels ``lab``."""
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    centers = np.empty((idx.shape[0], 3), np.float64)  # (M, 3)
    for axis, (values, column) in enumerate(zip(_axes(grid, np.float64), unravel(idx, grid))):
        centers[:, axis] = values[column]
    counts = np.bincount(lab, minlength=256)
    class_ids = np.flatnonzero(counts).astype(np.uint8)
    bounds = np.concatenate([[0], np.cumsum(counts[class_ids])]).astype(np.int64)
    return OccupiedVoxels(centers, lab, class_ids, bounds)


def _axes(grid: VoxelGrid, dtype: type) -> list[np.ndarray]:
    """Voxel-centre coordinates along x, y, z ((X,), (Y,), (Z,))."""
    return [((np.arange(n) + 0.5) * grid.voxel_size + o).astype(dtype) for n, o in zip(grid.shape, grid.origin)]


def unravel(idx: np.ndarray, grid: VoxelGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M,) C-order flat indices of the (X, Y, Z) grid -> i, j, k (bit shifts when Y and Z are powers of two)."""
    _, Y, Z = grid.shape
    if Y & (Y - 1) == 0 and Z & (Z - 1) == 0:
        zb, yb = Z.bit_length() - 1, Y.bit_length() - 1
        return idx >> (zb + yb), (idx >> zb) & (Y - 1), idx & (Z - 1)
    rest, k = np.divmod(idx, Z)
    i, j = np.divmod(rest, Y)
    return i, j, k


VOXEL_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "label"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u4"],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": 20,
    }
)


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(M, 3) uint8 RGB -> (M,) float32 holding 0x00RRGGBB bits (the PCL / RViz ``rgb`` convention)."""
    c = np.asarray(colors, np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).astype(np.uint32).view(np.float32)


def occupancy_to_pointcloud2(
    labels: np.ndarray,
    grid: VoxelGrid,
    classes: ClassTable,
    frame_id: str,
    stamp: Time | int | None = None,
    publish: Iterable[str | int] | None = None,
    voxels: OccupiedVoxels | None = None,
) -> PointCloud2:
    """``PointCloud2`` of occupied voxel centres: float32 x, y, z, float32-packed rgb, uint32 label.

    Built from one structured array (``VOXEL_CLOUD_DTYPE``, point_step 20), no per-voxel loop.
    """
    if voxels is None:
        voxels = occupied_voxels(labels, grid, publish_mask(classes, publish), classes.empty_index)
    arr = np.empty(voxels.labels.shape[0], VOXEL_CLOUD_DTYPE)  # (M,)
    arr["x"], arr["y"], arr["z"] = voxels.centers[:, 0], voxels.centers[:, 1], voxels.centers[:, 2]
    return _cloud_message(arr, voxels.labels, classes, frame_id, stamp)


def voxel_cloud(idx: np.ndarray, lab: np.ndarray, grid: VoxelGrid, classes: ClassTable, frame_id: str,
                stamp: Time | int | None = None) -> PointCloud2:  # fmt: skip
    """The voxel ``PointCloud2`` of :func:`occupancy_to_pointcloud2` straight from C-order flat indices ``idx``
    and labels ``lab`` ((M,) each), in grid order (no grouping by class: the node's path when no markers are
    built from the same voxels)."""
    arr = np.empty(idx.shape[0], VOXEL_CLOUD_DTYPE)  # (M,)
    for name, values, column in zip("xyz", _axes(grid, np.float32), unravel(idx, grid)):
        arr[name] = values[column]
    return _cloud_message(arr, lab, classes, frame_id, stamp)


def _cloud_message(arr: np.ndarray, lab: np.ndarray, classes: ClassTable, frame_id: str,
                   stamp: Time | int | None) -> PointCloud2:  # fmt: skip
    """``arr`` (VOXEL_CLOUD_DTYPE, x y z filled) with colours and labels of ``lab``, as a ``PointCloud2``."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: classes.num_classes] = classes.colors
    arr["rgb"] = pack_rgb(lut)[lab]  # pack the 256 colours once, then one gather
    arr["label"] = lab
    msg = PointCloud2()
    msg.header = Header(frame_id=frame_id, stamp=to_time(stamp))
    msg.height, msg.width = 1, int(arr.shape[0])
    msg.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
        PointField(name="label", offset=16, datatype=PointField.UINT32, count=1),
    ]
    msg.is_bigendian = False
    msg.point_step = VOXEL_CLOUD_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.data = array.array("B", arr.tobytes())
    msg.is_dense = True
    return msg
