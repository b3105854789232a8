"""Bird's-eye views of an occupancy grid: ``nav_msgs/OccupancyGrid`` (occupied / free / unknown) and a semantic
``sensor_msgs/Image`` (rgb8, the colour of the top-most class of each column).

Layouts. OccupancyGrid: cell (u, v) covers x = origin.x + u * resolution, y = origin.y + v * resolution; ``data``
is row-major with v (y) as the row, so it is the (X, Y) BEV transposed. Semantic image: row 0 is the far x edge
(forward up) and column 0 the largest y (left on the left), as seen from above with x forward.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs.base import to_time
from occle_ros.msgs.image import rgb_to_image


def bev_occupancy_grid(state: np.ndarray, grid: VoxelGrid, z: float, frame_id: str,
                       stamp: Time | int | None = None) -> OccupancyGrid:  # fmt: skip
    """(X, Y) int8 (100 occupied, 0 free, -1 unknown) -> ``OccupancyGrid`` at height ``z`` (m) in ``frame_id``."""
    msg = OccupancyGrid()
    msg.header = Header(frame_id=frame_id, stamp=to_time(stamp))
    msg.info.map_load_time = msg.header.stamp
    msg.info.resolution = float(grid.voxel_size)
    msg.info.width, msg.info.height = int(state.shape[0]), int(state.shape[1])
    msg.info.origin.position.x, msg.info.origin.position.y = float(grid.origin[0]), float(grid.origin[1])
    msg.info.origin.position.z = float(z)
    msg.info.origin.orientation.w = 1.0
    msg.data = array.array("b", np.ascontiguousarray(state.T, np.int8).tobytes())
    return msg


def semantic_bev_image(top: np.ndarray, classes: ClassTable, frame_id: str,
                       stamp: Time | int | None = None) -> Image:  # fmt: skip
    """rgb8 ``Image`` (H = X, W = Y) of ``top`` ((X, Y) class of the highest voxel of each column); black where a
    column is empty."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: classes.num_classes] = classes.colors
    lut[classes.empty_index] = 0
    rgb = lut[top]  # (X, Y, 3)
    return rgb_to_image(np.ascontiguousarray(rgb[::-1, ::-1]), frame_id, stamp)
