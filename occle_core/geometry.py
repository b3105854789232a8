"""Grids, voxelisation, camera projection and frustum masks.

Conventions: LiDAR frame x forward, y left, z up. A grid index (i, j, k) covers
``origin + (i, j, k) * voxel_size`` to ``origin + (i + 1, j + 1, k + 1) * voxel_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned voxel grid in the LiDAR frame.

    Attributes:
        origin: (3,) metres of the grid's minimum corner.
        voxel_size: edge of one cubic voxel in metres.
        shape: (X, Y, Z) voxel counts.
    """

    origin: tuple[float, float, float]
    voxel_size: float
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if len(self.origin) != 3 or len(self.shape) != 3:
            raise ValueError(f"grid origin and shape need 3 values, got {self.origin} and {self.shape}")
        if not self.voxel_size > 0:
            raise ValueError(f"grid voxel_size must be > 0, got {self.voxel_size}")
        if min(self.shape) < 1:
            raise ValueError(f"grid shape must be positive, got {self.shape}")
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))

    @classmethod
    def from_dict(cls, d: dict) -> VoxelGrid:
        """Build from ``{"origin": [...], "voxel_size": s, "shape": [...]}``."""
        return cls(tuple(d["origin"]), float(d["voxel_size"]), tuple(d["shape"]))

    def to_dict(self) -> dict:
        """Plain-dict form, the inverse of :meth:`from_dict`."""
        return {"origin": list(self.origin), "voxel_size": self.voxel_size, "shape": list(self.shape)}

    @property
    def num_voxels(self) -> int:
        """X * Y * Z."""
        return int(np.prod(self.shape))

    @property
    def upper(self) -> np.ndarray:
        """(3,) metres of the maximum corner."""
        return np.asarray(self.origin) + np.asarray(self.shape) * self.voxel_size

    def scaled(self, factor: int) -> VoxelGrid:
        """The same extent with voxels ``factor`` times larger (shape divided by ``factor``)."""
        if any(s % factor for s in self.shape):
            raise ValueError(f"grid shape {self.shape} is not divisible by {factor}")
        return VoxelGrid(self.origin, self.voxel_size * factor, tuple(s // factor for s in self.shape))

    def point_indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel index of each point.

        Args:
            points: (N, >=3) array, x y z in the first three columns.

        Returns:
            idx: (M, 3) int64 voxel indices of the points inside the grid.
            inside: (N,) bool, which points are inside.
        """
        inside = self.inside_mask(points)
        ijk = np.floor((points[inside, :3] - np.asarray(self.origin, np.float32)) / np.float32(self.voxel_size))
        return ijk.astype(np.int64), inside

    def inside_mask(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: the points (N, >=3) whose voxel index lies inside the grid; rows with NaN/Inf are outside.

        Axis by axis on the columns (``(x - origin) / voxel_size`` in [0, n), the same arithmetic as
        :meth:`point_indices`): row-wise reductions over an (N, 3) array are several times slower in numpy.
        """
        inside = np.ones(len(points), bool)
        for axis, (o, n) in enumerate(zip(self.origin, self.shape)):
            c = (points[:, axis] - np.float32(o)) / np.float32(self.voxel_size)  # (N,) voxel coordinate
            inside &= c >= 0
            inside &= c < n
        return inside

    def flat_index(self, ijk: np.ndarray) -> np.ndarray:
        """(M, 3) indices -> (M,) C-order flat indices into a (X, Y, Z) array."""
        return np.ravel_multi_index((ijk[:, 0], ijk[:, 1], ijk[:, 2]), self.shape)

    def centers(self) -> np.ndarray:
        """(X, Y, Z, 3) float32 voxel centres in metres."""
        axes = [
            (np.arange(n, dtype=np.float32) + 0.5) * np.float32(self.voxel_size) + np.float32(o)
            for n, o in zip(self.shape, self.origin)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def centers_of(self, ijk: np.ndarray) -> np.ndarray:
        """(M, 3) indices -> (M, 3) float32 centres in metres."""
        return ((ijk + 0.5) * self.voxel_size + np.asarray(self.origin)).astype(np.float32)


SEMANTIC_KITTI_GRID = VoxelGrid((0.0, -25.6, -2.0), 0.2, (256, 256, 32))
OCC3D_GRID = VoxelGrid((-40.0, -40.0, -1.0), 0.4, (200, 200, 16))


@dataclass(frozen=True)
class Calib:
    """Camera model of one frame.

    Attributes:
        P: (3, 4) projection matrix of the (rectified) camera, pixels = P @ X_cam.
        T_cam_lidar: (4, 4) rigid transform LiDAR frame -> camera frame.
        image_size: (H, W) in pixels of the image that P refers to.
    """

    P: np.ndarray
    T_cam_lidar: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        P = np.asarray(self.P, np.float64)
        T = np.asarray(self.T_cam_lidar, np.float64)
        if P.shape != (3, 4):
            raise ValueError(f"calib P must be 3x4, got shape {P.shape}")
        if T.shape != (4, 4):
            raise ValueError(f"calib T_cam_lidar must be 4x4, got shape {T.shape}")
        if not (np.all(np.isfinite(P)) and np.all(np.isfinite(T))):
            raise ValueError("calib P and T_cam_lidar must be finite")
        if P[0, 0] <= 0 or P[1, 1] <= 0:
            raise ValueError(f"calib P must have positive focal lengths, got fx={P[0, 0]} fy={P[1, 1]}")
        h, w = (int(v) for v in self.image_size)
        if h < 1 or w < 1:
            raise ValueError(f"calib image_size must be positive (H, W), got {self.image_size}")
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "T_cam_lidar", T)
        object.__setattr__(self, "image_size", (h, w))

    @property
    def lidar_to_image(self) -> np.ndarray:
        """(3, 4) matrix mapping homogeneous LiDAR points to homogeneous pixels."""
        return self.P @ self.T_cam_lidar

    def resized(self, height: int, width: int) -> Calib:
        """The calibration of the image resized to (height, width)."""
        sy, sx = height / self.image_size[0], width / self.image_size[1]
        S = np.diag([sx, sy, 1.0])
        return Calib(S @ self.P, self.T_cam_lidar, (height, width))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project LiDAR-frame points into the image.

        Args:
            points: (N, >=3) x y z in the LiDAR frame.

        Returns:
            uv: (N, 2) float pixel coordinates (column, row).
            depth: (N,) depth along the camera axis in metres.
            visible: (N,) bool, in front of the camera (depth > 0.1 m) and inside the image.
        """
        M = self.lidar_to_image.astype(np.float32)
        xyz = np.asarray(points[:, :3], np.float32)
        hom = xyz @ M[:, :3].T + M[:, 3]
        depth = hom[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = hom[:, :2] / depth[:, None]
        h, w = self.image_size
        visible = (depth > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        return uv, depth, visible


def frustum_mask(grid: VoxelGrid, calib: Calib) -> np.ndarray:
    """(X, Y, Z) bool: voxels whose centre projects inside the image, in front of the camera."""
    _, _, visible = calib.project(grid.centers().reshape(-1, 3))
    return visible.reshape(grid.shape)


def voxelize_labels(
    grid: VoxelGrid, points: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Majority label per voxel of labelled points (vectorised, no per-point loop).

    Args:
        points: (N, >=3) LiDAR-frame points.
        labels: (N,) int class per point; ``ignore_index`` points are skipped.

    Returns:
        (X, Y, Z) uint8, ``ignore_index`` where no labelled point falls.
    """
    ijk, inside = grid.point_indices(points)
    lab = np.asarray(labels)[inside].astype(np.int64)
    keep = lab != ignore_index
    flat = grid.flat_index(ijk[keep])
    lab = lab[keep]
    out = np.full(grid.num_voxels, ignore_index, np.uint8)
    if flat.size == 0:
        return out.reshape(grid.shape)
    key = flat * num_classes + lab
    uniq, counts = np.unique(key, return_counts=True)
    vox, cls = uniq // num_classes, uniq % num_classes
    # stable: sort by (voxel, count) so the last entry of each voxel is its majority class
    order = np.lexsort((counts, vox))
    vox, cls = vox[order], cls[order]
    last = np.r_[vox[1:] != vox[:-1], True]
    out[vox[last]] = cls[last].astype(np.uint8)
    return out.reshape(grid.shape)


def free_space_mask(
    grid: VoxelGrid,
    points: np.ndarray,
    origin: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
    step: float | None = None,
    max_samples_per_chunk: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels hit by LiDAR points and voxels crossed by their rays before the hit.

    Each point defines the segment ``origin -> point``. The segment is clipped to the grid box and sampled at
    ``step`` (default: half a voxel) from its entry, at ``t_enter + (k + 0.5) * step``; every voxel holding a
    sample is free unless a point lies in it. Voxels a ray only clips at a corner may be skipped (a smaller
    ``step`` catches them). Sampling is vectorised: rays are bucketed by their sample count (ratio 1.25) into
    dense (rays, samples) blocks of at most ``max_samples_per_chunk`` samples, so memory stays bounded and
    there is no per-ray Python loop (about 0.22 s CPU for a 120k-point scan in the SemanticKITTI grid).

    Args:
        grid: the voxel grid, in the same frame as ``points`` and ``origin``.
        points: (N, >=3) hit points, x y z in the first three columns.
        origin: (3,) sensor position the rays start from.
        step: sampling distance along the rays in metres; ``None`` = ``grid.voxel_size / 2``.
        max_samples_per_chunk: memory bound of one vectorised chunk.

    Returns:
        occupied: (X, Y, Z) bool, voxels that contain at least one point.
        free: (X, Y, Z) bool, voxels traversed by a ray before its hit, never ``occupied``.
    """
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, >=3), got {pts.shape}")
    o = np.asarray(origin, np.float64).reshape(-1)
    if o.shape != (3,) or not np.all(np.isfinite(o)):
        raise ValueError(f"origin must be 3 finite values, got {origin!r}")
    vs = float(grid.voxel_size)
    step = vs / 2.0 if step is None else float(step)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    shape = grid.shape
    occupied = np.zeros(grid.num_voxels, bool)
    free = np.zeros(grid.num_voxels, bool)
    pts = pts[np.all(np.isfinite(pts[:, :3]), axis=1)]
    ijk, _ = grid.point_indices(pts)
    occupied[grid.flat_index(ijk)] = True

    # rays in voxel-index units: q(t) = q0 + u * t, t in metres along the unit direction
    q0 = (o - np.asarray(grid.origin)) / vs  # (3,)
    d = pts[:, :3].astype(np.float64) - o  # (N, 3)
    length = np.linalg.norm(d, axis=1)  # (N,)
    keep = length > 1e-6
    d, length = d[keep], length[keep]
    u = d / length[:, None]  # (R, 3) unit directions
    # slab clip of [0, length] to the grid box [0, shape] in index space
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / (u / vs)  # (R, 3)
        ta = (0.0 - q0) * inv
        tb = (np.asarray(shape, np.float64) - q0) * inv
    tmin = np.where(np.isnan(ta), -np.inf, np.minimum(ta, tb))
    tmax = np.where(np.isnan(ta), np.inf, np.maximum(ta, tb))
    # a direction component of 0 only passes if the origin lies inside that slab
    flat_axis = u == 0.0
    inside_slab = (q0 >= 0) & (q0 < np.asarray(shape))
    tmin = np.where(flat_axis, np.where(inside_slab, -np.inf, np.inf), tmin)
    tmax = np.where(flat_axis, np.where(inside_slab, np.inf, -np.inf), tmax)
    t_enter = np.maximum(tmin.max(axis=1), 0.0)  # (R,)
    t_exit = np.minimum(tmax.min(axis=1), length)  # (R,)
    n = np.floor((t_exit - t_enter) / step + 0.5).astype(np.int64)  # samples at t_enter + (k + 0.5) * step
    n = np.maximum(n, 0)
    rays = np.flatnonzero(n)
    if rays.size == 0:
        return occupied.reshape(shape), free.reshape(shape)
    n, t_enter, u = n[rays], t_enter[rays], u[rays] / vs
    start = (q0 + u * (t_enter + 0.5 * step)[:, None]).astype(np.float32)  # (R, 3) first sample, index units
    delta = (u * step).astype(np.float32)  # (R, 3) index-space advance per sample
    if grid.num_voxels >= 1 << 24:
        raise ValueError(f"free_space_mask supports grids of fewer than 2**24 voxels, got shape {shape}")
    free_ext = np.zeros(grid.num_voxels + 1, bool)  # last slot absorbs padded samples
    # rays bucketed by sample count (ratio 1.25) -> dense (rays, samples) blocks with little padding
    bucket = np.floor(np.log(n) / np.log(1.25)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    edges = np.flatnonzero(np.diff(bucket[order])) + 1
    for group in np.split(order, edges):
        n_max = int(n[group].max())
        rows = max(1, max_samples_per_chunk // n_max)
        k = np.arange(n_max, dtype=np.float32)  # (S,)
        for g0 in range(0, len(group), rows):
            sel = group[g0 : g0 + rows]
            buf = np.empty((len(sel), n_max), np.float32)  # (r, S) sample coordinate along one axis
            flat = np.zeros((len(sel), n_max), np.float32)  # (r, S) flat voxel index, exact in float32
            for ax in range(3):
                # samples lie in [0, shape] by the slab clip; floor, then clamp the top edge
                np.multiply(delta[sel, ax, None], k, out=buf)
                buf += start[sel, ax, None]
                np.floor(buf, out=buf)
                np.minimum(buf, shape[ax] - 1, out=buf)
                flat *= shape[ax]
                flat += buf
            flat[k[None, :] >= n[sel, None]] = grid.num_voxels
            free_ext[flat.astype(np.int64).ravel()] = True
    free[:] = free_ext[:-1]
    free &= ~occupied
    return occupied.reshape(shape), free.reshape(shape)
