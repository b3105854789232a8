"""Sensor models of the synthetic world (by default the geometry of KITTI odometry sequence 00).

LiDAR: by default a Velodyne HDL-64E pattern mounted 1.73 m above the road: 64 beams from +2.0 to -24.9 deg
(upper block 1/3 deg, lower block 1/2 deg spacing), ``azimuth_steps`` (2000) columns, 2.5-80 m range. Other
rigs (:func:`beam_elevations`): 32 beams +10.67..-30.67 deg (HDL-32E, nuScenes' LIDAR_TOP, 1.84 m up), 128
beams +15..-25 deg (VLS-128 span); any mounting height and pitch; intensity as the model's reflectance, as
real KITTI HDL-64E returns or on nuScenes' 0..255 scale; range noise and dropout rates.
Camera: image_2 of KITTI with seq 00's P2 and Tr (376 x 1241 px, or scaled by ``image_scale``).
Both give, per primitive in view, the rectangle of their ray grid (range image / image) it may cover, so ray
casting loops over primitives in view but never over rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from occle_core.geometry import Calib

#: KITTI odometry sequence 00, ``calib.txt``: P2 (left colour camera) and Tr (velodyne -> cam0).
KITTI_P2 = np.array(
    [
        [7.188560000000e02, 0.0, 6.071928000000e02, 4.538225000000e01],
        [0.0, 7.188560000000e02, 1.852157000000e02, -1.130887000000e-01],
        [0.0, 0.0, 1.0, 3.779761000000e-03],
    ]
)
KITTI_P0 = np.array(
    [
        [7.188560000000e02, 0.0, 6.071928000000e02, 0.0],
        [0.0, 7.188560000000e02, 1.852157000000e02, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]
)
KITTI_TR = np.array(
    [
        [4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
        [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
        [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
KITTI_IMAGE_SIZE = (376, 1241)
LIDAR_HEIGHT = 1.73
HDL64_ELEVATIONS_DEG = np.r_[np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]
HDL32_ELEVATIONS_DEG = np.linspace(10.67, -30.67, 32)  # HDL-32E: 1.33 deg spacing
VLS128_ELEVATIONS_DEG = np.linspace(15.0, -25.0, 128)  # VLS-128 span, uniform spacing
INTENSITY_SCALES = ("reflectance", "kitti", "nuscenes")
#: quantile map of the model's reflectance onto real KITTI HDL-64E intensities: knots measured on the
#: camera-FOV points of 4 synthetic frames (seeds 1-4) and of 6 real KITTI object frames (119k points: 12.4 %
#: zeros, median 0.28, 90th percentile 0.42, 0.01 steps); reflectances below the first knot give 0.
KITTI_INTENSITY_KNOTS = (
    (0.07, 0.082, 0.094, 0.106, 0.12, 0.138, 0.177, 0.23, 0.285, 0.324, 0.403, 0.99),
    (0.03, 0.14, 0.19, 0.24, 0.28, 0.30, 0.33, 0.37, 0.42, 0.49, 0.63, 0.99),
)


def beam_elevations(beams: int) -> np.ndarray:
    """(beams,) descending beam elevations in radians of the 32 / 64 / 128-beam rigs."""
    patterns = {32: HDL32_ELEVATIONS_DEG, 64: HDL64_ELEVATIONS_DEG, 128: VLS128_ELEVATIONS_DEG}
    if beams not in patterns:
        raise ValueError(f"beams must be one of {sorted(patterns)}, got {beams}")
    return np.deg2rad(patterns[beams])


def pitch_transform(pitch_deg: float) -> np.ndarray:
    """(4, 4) rotation about y taking the pitched sensor frame to the level one (positive: nose down)."""
    a = np.deg2rad(pitch_deg)
    c, s = np.cos(a), np.sin(a)
    T = np.eye(4)
    T[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    return T


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(P, 8, 3) corners of axis-aligned boxes."""
    sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], bool)
    return np.where(sel[None], hi[:, None, :], lo[:, None, :])


def split_columns(p, r0, r1, c0, c1, width: int, wrap: bool) -> np.ndarray:
    """Rows (p, r0, r1, c0, c1); with ``wrap`` column ranges are taken modulo ``width`` (split in two)."""
    if not wrap:
        c0, c1 = np.clip(c0, 0, width), np.clip(c1, 0, width)
        keep = (c1 > c0) & (r1 > r0)
        return np.stack([p, r0, r1, c0, c1], axis=1)[keep]
    length = np.minimum(c1 - c0, width)
    start = np.mod(c0, width)
    end = start + length
    first = np.stack([p, r0, r1, start, np.minimum(end, width)], axis=1)
    over = end > width
    second = np.stack([p, r0, r1, np.zeros_like(start), end - width], axis=1)[over]
    out = np.concatenate([first, second])
    return out[(out[:, 4] > out[:, 3]) & (out[:, 2] > out[:, 1])]


# ------------------------------------------------------------------------------------------------ sensors


@dataclass
class LidarModel:
    """Spinning LiDAR, HDL-64E-like by default (LiDAR frame: x forward, y left, z up).

    Attributes:
        azimuth_steps: columns per revolution.
        elevations: (B,) strictly descending beam elevations in radians (see :func:`beam_elevations`).
        min_range, max_range: metres.
        range_noise: standard deviation of the Gaussian range noise (metres).
        dropout: base probability of a lost return (dark, far and grazing surfaces lose more).
        height: mounting height above the road (metres).
        pitch: mounting pitch in degrees (positive: nose down); the LiDAR frame (and the voxel grid) tilts.
        intensity: ``reflectance`` (the model's, in [0, 1)), ``kitti`` (the distribution of real KITTI
            returns, :data:`KITTI_INTENSITY_KNOTS`) or ``nuscenes`` (integers 0..255, mostly low values).
    """

    azimuth_steps: int = 2000
    elevations: np.ndarray = field(default_factory=lambda: np.deg2rad(HDL64_ELEVATIONS_DEG))  # (64,) descending
    min_range: float = 2.5
    max_range: float = 80.0
    range_noise: float = 0.02
    dropout: float = 0.02
    height: float = LIDAR_HEIGHT
    pitch: float = 0.0
    intensity: str = "reflectance"

    def __post_init__(self) -> None:
        if self.azimuth_steps < 8:
            raise ValueError(f"azimuth_steps must be >= 8, got {self.azimuth_steps}")
        if not 0.3 <= self.height <= 5.0:
            raise ValueError(f"LiDAR height must be in [0.3, 5] m, got {self.height}")
        if not abs(self.pitch) <= 20.0:
            raise ValueError(f"LiDAR pitch must be in [-20, 20] deg, got {self.pitch}")
        if self.intensity not in INTENSITY_SCALES:
            raise ValueError(f"LiDAR intensity must be one of {INTENSITY_SCALES}, got {self.intensity!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LiDAR dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.range_noise <= 1.0:
            raise ValueError(f"LiDAR range_noise must be in [0, 1] m, got {self.range_noise}")
        self.elevations = np.asarray(self.elevations, np.float64)
        if np.any(np.diff(self.elevations) >= 0):
            raise ValueError("LiDAR elevations must be strictly descending")
        self.azimuths = -np.pi + (np.arange(self.azimuth_steps) + 0.5) * (2 * np.pi / self.azimuth_steps)
        ce, se = np.cos(self.elevations)[:, None], np.sin(self.elevations)[:, None]
        ca, sa = np.cos(self.azimuths)[None, :], np.sin(self.azimuths)[None, :]
        self.dirs = np.stack(np.broadcast_arrays(ce * ca, ce * sa, se), axis=-1).astype(np.float32)  # (64, A, 3)

    @property
    def shape(self) -> tuple[int, int]:
        """(beams, azimuth_steps) of the range image."""
        return len(self.elevations), self.azimuth_steps

    def scale_intensity(self, reflectance: np.ndarray) -> np.ndarray:
        """float32 intensities on this sensor's scale from the model's reflectances in [0, 1).

        ``kitti`` maps them through the quantiles of real KITTI returns (0.01 steps, about 12 % zeros).
        nuScenes LIDAR_TOP intensities are integers 0..255 concentrated at low values with bright lane
        markings and signs: a gamma of 1.8 maps the reflectance onto that range (not fitted to real scans).
        """
        if self.intensity == "reflectance":
            return reflectance
        if self.intensity == "kitti":
            src, dst = KITTI_INTENSITY_KNOTS
            mapped = np.where(reflectance < src[0], 0.0, np.interp(reflectance, src, dst))
            return (np.round(mapped * 100.0) / 100.0).astype(np.float32)
        return np.round(255.0 * reflectance.astype(np.float32) ** 1.8).astype(np.float32)

    def rects(self, corners: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Range-image rectangles of primitives whose sensor-frame AABB corners are ``corners`` (P, 8, 3)."""
        xy = corners[..., :2]
        lo, hi = xy.min(axis=1), xy.max(axis=1)
        dx = np.maximum(np.maximum(lo[:, 0], -hi[:, 0]), 0)
        dy = np.maximum(np.maximum(lo[:, 1], -hi[:, 1]), 0)
        dmin = np.hypot(dx, dy)
        dmax = np.linalg.norm(xy, axis=2).max(axis=1)
        zmin, zmax = corners[..., 2].min(axis=1), corners[..., 2].max(axis=1)
        keep = dmin < self.max_range
        emax = np.arctan2(zmax, np.where(zmax > 0, dmin, dmax))
        emin = np.arctan2(zmin, np.where(zmin < 0, dmin, dmax))
        neg = -self.elevations  # ascending
        margin = 1e-3
        r0 = np.searchsorted(neg, -(emax + margin))
        r1 = np.searchsorted(neg, -(emin - margin), side="right")
        center = xy.mean(axis=1)
        phic = np.arctan2(center[:, 1], center[:, 0])
        rel = np.angle(np.exp(1j * (np.arctan2(xy[..., 1], xy[..., 0]) - phic[:, None])))
        step = 2 * np.pi / self.azimuth_steps
        c0 = np.floor((phic + rel.min(axis=1) + np.pi) / step - 0.5).astype(np.int64) - 1
        c1 = np.ceil((phic + rel.max(axis=1) + np.pi) / step - 0.5).astype(np.int64) + 2
        full = (dmin <= 0) | (c1 - c0 >= self.azimuth_steps)
        c0 = np.where(full, 0, c0)
        c1 = np.where(full, self.azimuth_steps, c1)
        rows = split_columns(ids[keep], r0[keep], r1[keep], c0[keep], c1[keep], self.azimuth_steps, wrap=True)
        return rows


@dataclass
class CameraModel:
    """Pinhole camera image_2 with KITTI P2 (scaled to the image size)."""

    calib: Calib

    def __post_init__(self) -> None:
        P = self.calib.P
        M = P[:, :3]
        center_cam0 = -np.linalg.solve(M, P[:, 3])  # camera centre in cam0 coordinates
        T_lidar_cam = np.linalg.inv(self.calib.T_cam_lidar)
        self.center = (T_lidar_cam[:3, :3] @ center_cam0 + T_lidar_cam[:3, 3]).astype(np.float64)  # LiDAR frame
        H, W = self.calib.image_size
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (H, W, 3)
        d_cam0 = pix @ np.linalg.inv(M).T
        d = d_cam0 @ T_lidar_cam[:3, :3].T
        self.dirs = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)  # (H, W, 3) LiDAR frame
        self.max_range = 200.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.calib.image_size

    def rects(self, corners: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Image rectangles of primitives whose LiDAR-frame AABB corners are ``corners`` (P, 8, 3).

        Boxes that cross the plane ``depth = near`` are clipped to it (their edges are cut where they cross),
        so only the part in front of the camera is projected. No visible surface can lie nearer than 1 m:
        at that depth the image covers less than +-0.9 m around the camera, inside the ego vehicle.
        """
        H, W = self.calib.image_size
        near = 1.0
        M = self.calib.lidar_to_image
        hom = corners @ M[:, :3].T + M[:, 3]  # (P, 8, 3) homogeneous pixels, [..., 2] = depth
        depth = hom[..., 2]
        front = depth >= near
        edges = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])
        ha, hb = hom[:, edges[:, 0]], hom[:, edges[:, 1]]  # (P, 12, 3)
        da, db = ha[..., 2], hb[..., 2]
        cross = (da >= near) != (db >= near)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(cross, (near - da) / (db - da), 0.0)[..., None]
            hc = ha + w * (hb - ha)  # (P, 12, 3) points on the near plane
            uv_c = hc[..., :2] / near
            uv_f = hom[..., :2] / np.where(front, depth, 1.0)[..., None]
        pts = np.concatenate([uv_f, uv_c], axis=1)  # (P, 20, 2)
        valid = np.concatenate([front, cross], axis=1)  # (P, 20)
        keep = valid.any(axis=1) & (depth.min(axis=1) < self.max_range)
        lo = np.where(valid[..., None], pts, np.inf).min(axis=1)
        hi = np.where(valid[..., None], pts, -np.inf).max(axis=1)
        keep &= (lo[:, 0] < W) & (hi[:, 0] >= 0) & (lo[:, 1] < H) & (hi[:, 1] >= 0)
        lo, hi = np.clip(lo[keep], -1, W + 1), np.clip(hi[keep], -1, W + 1)
        c0, c1 = np.floor(lo[:, 0]).astype(np.int64) - 1, np.ceil(hi[:, 0]).astype(np.int64) + 2
        r0 = np.clip(np.floor(lo[:, 1]).astype(np.int64) - 1, 0, H)
        r1 = np.clip(np.ceil(hi[:, 1]).astype(np.int64) + 2, 0, H)
        return split_columns(ids[keep], r0, r1, c0, c1, W, wrap=False)


def kitti_calib(image_scale: float = 1.0) -> Calib:
    """KITTI odometry seq 00 camera-2 calibration, for an image scaled by ``image_scale``."""
    if not image_scale > 0:
        raise ValueError(f"image_scale must be > 0, got {image_scale}")
    base = Calib(KITTI_P2, KITTI_TR, KITTI_IMAGE_SIZE)
    if image_scale == 1.0:
        return base
    H = max(8, int(round(KITTI_IMAGE_SIZE[0] * image_scale)))
    W = max(8, int(round(KITTI_IMAGE_SIZE[1] * image_scale)))
    return base.resized(H, W)


def scaled_p0(calib: Calib) -> np.ndarray:
    """KITTI's P0 (cam0) scaled to the image size of ``calib`` (``calib.txt`` keeps P0 beside P2)."""
    sy, sx = calib.image_size[0] / KITTI_IMAGE_SIZE[0], calib.image_size[1] / KITTI_IMAGE_SIZE[1]
    return np.diag([sx, sy, 1.0]) @ KITTI_P0
