"""What the node publishes for one frame, all in the grid frame: the voxel cloud, capped and rate-limited
markers, and the bird's-eye views, each restricted to the ``publish_region`` (:mod:`occle_ros.region`).

:meth:`FrameOutputs.build` is the node's (and the benchmark's) single place for the work after the model. The
grid is scanned once for its non-empty voxels; everything else works on that list (a few percent of the grid):
the region mask, the voxel cloud (in grid order), the markers (grouped by class only when they are due) and the
BEV columns. Vectorised; the per-grid geometry (frustums, voxel ranges) is cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import Image, PointCloud2

from occle_core.geometry import Calib, VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs.bev import bev_occupancy_grid, semantic_bev_image
from occle_ros.msgs.markers import serialize_occupancy_markers
from occle_ros.msgs.voxels import OccupiedVoxels, grouped_voxels, unravel, voxel_cloud
from occle_ros.params import RegionParams, RuntimeParams
from occle_ros.region import FrustumCache, LidarRays, band_layers, bev_columns, bev_state, region_mask


@dataclass
class Published:
    """The messages of one frame (None: not wanted, or markers not due)."""

    voxels: PointCloud2 | None = None
    markers: bytes | None = None  # serialized MarkerArray
    bev: OccupancyGrid | None = None
    bev_semantic: Image | None = None
    num_voxels: int = 0  # voxels in the published region


def cap_voxels(voxels: OccupiedVoxels, cap: int) -> OccupiedVoxels:
    """At most ``cap`` voxels, taken at an even stride (so every class keeps its share), grouping kept."""
    m = voxels.labels.shape[0]
    if m <= cap:
        return voxels
    idx = np.linspace(0, m - 1, cap).astype(np.int64) if cap else np.zeros(0, np.int64)  # ascending: grouped
    labels = voxels.labels[idx]
    counts = np.bincount(labels, minlength=256)
    class_ids = np.flatnonzero(counts).astype(np.uint8)
    bounds = np.concatenate([[0], np.cumsum(counts[class_ids])]).astype(np.int64)
    return OccupiedVoxels(voxels.centers[idx], labels, class_ids, bounds)


class FrameOutputs:
    """Builds the outputs of a frame.

    Args:
        grid, classes: the predictor's.
        region: how the LiDAR-observed region is computed.
        warn_once: ``(key, text)`` logged once per key (the marker cap).
    """

    def __init__(self, grid: VoxelGrid, classes: ClassTable, region: RegionParams,
                 warn_once: Callable[[str, str], None] = lambda key, text: None) -> None:  # fmt: skip
        self.grid, self.classes, self.region, self.warn_once = grid, classes, region, warn_once
        self.frustums = FrustumCache(grid)
        self._rays: LidarRays | None = None
        self._last_markers = -np.inf

    def rays(self, T_grid_lidar: np.ndarray) -> LidarRays:
        """The voxel ranges / bins for this LiDAR pose (rebuilt only when the pose changes)."""
        if self._rays is None or not np.array_equal(self._rays.T, T_grid_lidar):
            r = self.region
            self._rays = LidarRays(self.grid, T_grid_lidar, r.azimuth_deg, r.elevation_deg, r.margin)
        return self._rays

    def build(self, labels: np.ndarray, lut: np.ndarray, params: RuntimeParams, calibs: Sequence[Calib],
              points_lidar: np.ndarray, T_grid_lidar: np.ndarray, frame_id: str, stamp: Time, now: float,
              want: tuple[bool, bool, bool]) -> Published:  # fmt: skip
        """The messages of ``labels`` ((X, Y, Z) uint8) under ``params``.

        Args:
            lut: (256,) bool classes to publish.
            calibs: the cameras of the frame (grid frame), for the frustum region.
            points_lidar: (N, >=3) the frame's points in the LiDAR frame (observed region, BEV free space).
            now: monotonic seconds (markers rate limit).
            want: (voxels, markers, bev) enabled.
        """
        want_voxels, want_markers, want_bev = want
        empty = self.classes.empty_index
        region = params.publish_region
        frustum = self.frustums.mask(list(calibs)) if region != "all" else None
        rays = self.rays(T_grid_lidar) if want_bev or region == "observed" else None
        image = rays.range_image(points_lidar) if rays is not None else None
        flat = labels.reshape(-1)
        cand = np.flatnonzero(flat != empty)  # (M0,) C order: the one scan of the grid
        inside = region_mask(cand, region, frustum, rays, image)  # (M0,)
        idx = cand[inside]  # (M1,) non-empty voxels in the region
        lab = flat[idx]
        shown = lut[lab]  # (M1,) of the published classes
        pub_idx, pub_lab = (idx, lab) if shown.all() else (idx[shown], lab[shown])
        out = Published(num_voxels=int(pub_idx.shape[0]))
        if want_voxels:
            out.voxels = voxel_cloud(pub_idx, pub_lab, self.grid, self.classes, frame_id, stamp)
        if want_markers and now - self._last_markers >= params.marker_period:
            if out.num_voxels > params.marker_cap:
                self.warn_once("marker_cap", f"{out.num_voxels} voxels exceed markers.max_voxels "
                                             f"{params.marker_cap}: markers show an even subset")  # fmt: skip
            voxels = cap_voxels(grouped_voxels(pub_idx, pub_lab, self.grid), params.marker_cap)
            out.markers = serialize_occupancy_markers(labels, self.grid, self.classes, frame_id, stamp,
                                                      params.marker_alpha, voxels=voxels)  # fmt: skip
            self._last_markers = now
        if want_bev:
            layers = band_layers(self.grid, params.bev_band)
            free = rays.free_layers(image, layers)  # (X, Y, L)
            if region == "frustum":
                free &= frustum[:, :, layers]
            occupied, top = bev_columns(*unravel(idx, self.grid), lab, self.grid.shape, layers, empty)
            out.bev = bev_occupancy_grid(bev_state(occupied, free), self.grid, params.bev_band[0], frame_id, stamp)
            out.bev_semantic = semantic_bev_image(top, self.classes, frame_id, stamp)
        return out
