"""A synthetic sequence: the scene, its sensors and the products of each frame (LiDAR scans, camera images,
2D pseudo labels and SemanticKITTI voxel ground truth).

Ground truth (as SemanticKITTI builds it)
``voxels/*.label``: LiDAR hits of a window of ``window`` scans ``stride`` frames apart (default 5 and
2: the current scan and those 2, 4, 6 and 8 frames ahead along the trajectory) accumulated in the
current 256 x 256 x 32 grid, majority raw label per voxel. ``.invalid``: voxels never observed by the
window: not hit and not traversed by a returned ray of any of its scans (a ray traverses a voxel when it
passes within half a voxel of its centre before its return; voxels under the ground or above every
scan's top beam are unobservable and skipped). ``.occluded``: voxels behind the return of the nearest
ray of the current scan. ``.bin``: the voxelised current scan. Far ground (beyond ~25 m) shows the ring
pattern of the few accumulated scans; a larger ``window`` makes it denser at a higher cost.

LiDAR returns: Gaussian range noise of 2 cm, random dropouts (2 % plus more for dark and far surfaces), foliage
penetration on vegetation, intensity = class reflectivity x incidence falloff x range falloff + noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.geometry import SEMANTIC_KITTI_GRID, Calib, VoxelGrid, voxelize_labels
from occle_core.labels import IGNORE_INDEX, class_table
from occle_core.synth.appearance import APPEARANCES, realistic_image
from occle_core.synth.classes import REFLECTIVITY, TEX_GLASS, VEGETATION
from occle_core.synth.noise import stream
from occle_core.synth.pseudo_noise import pseudo_labels
from occle_core.synth.raycast import cast_rays
from occle_core.synth.render import CameraFrame, shade
from occle_core.synth.scene import build_scene
from occle_core.synth.sensors import CameraModel, LidarModel, box_corners, kitti_calib, pitch_transform


@dataclass
class Scan:
    """One LiDAR scan: points (N, 4) in the LiDAR frame, uint32 labels (N,), range image (B, A) of returns."""

    points: np.ndarray
    labels: np.ndarray
    depth: np.ndarray  # (B, A) float32 measured range, inf where no return
    world: np.ndarray  # (N, 3) float32 points in the scene frame


_GRID_RAYS: dict[tuple, dict[str, np.ndarray]] = {}  # SyntheticSequence._ray_index of a grid (fixed to the LiDAR)


class SyntheticSequence:
    """A procedural sequence: scene, sensors and per-frame products (scans, images, pseudo labels, voxels).

    Args:
        seed: scene and noise seed.
        frames: number of frames.
        image_scale: camera image size relative to KITTI's 376 x 1241.
        lidar: the LiDAR rig (beams, columns, height, pitch, intensity scale, noise); KITTI's HDL-64E by default.
        window: scans whose rays decide what the voxel ground truth observed (``invalid``): the current one and
            ``window - 1`` next ones, ``stride`` frames apart.
        stride: frames between two accumulated scans.
        grid: voxel grid (SemanticKITTI's by default).
        accumulate: scans whose points vote the voxel labels, ``stride`` frames apart from the current one
            (SemanticKITTI accumulates many future scans, so far ground is dense); ``window`` by default.
        appearance: ``flat`` (class colours, Lambert shading) or ``realistic`` (materials, shadows, a camera
            response: :mod:`occle_core.synth.appearance`).
        fov_only: the published cloud (:meth:`cloud`) keeps only points that project into the image (the
            KITTI object convention); ground truth still comes from the whole scans.
    """

    def __init__(
        self,
        seed: int,
        frames: int,
        image_scale: float = 1.0,
        lidar: LidarModel | None = None,
        window: int = 5,
        stride: int = 2,
        grid: VoxelGrid = SEMANTIC_KITTI_GRID,
        accumulate: int | None = None,
        fov_only: bool = False,
        appearance: str = "flat",
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
        accumulate = window if accumulate is None else accumulate
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.stride = int(stride)
        self.seed = int(seed)
        self.frames = int(frames)
        self.window = int(window)
        self.accumulate = int(accumulate)
        self.fov_only = bool(fov_only)
        self.appearance = appearance
        self.grid = grid
        self.classes = class_table("semantic_kitti")
        self.lidar = LidarModel() if lidar is None else lidar
        self.scene = build_scene(seed, frames + (max(window, accumulate) - 1) * stride, self.lidar.height)
        # the LiDAR may be mounted pitched on the vehicle, the camera level: Tr (LiDAR -> camera) carries the pitch
        pitched = pitch_transform(self.lidar.pitch)  # pitched LiDAR frame -> level vehicle-aligned frame
        self.sensor_poses = self.scene.poses @ pitched  # (F', 4, 4) LiDAR -> scene frame
        kitti = kitti_calib(image_scale)
        self.calib = Calib(kitti.P, kitti.T_cam_lidar @ pitched, kitti.image_size)
        self.camera = CameraModel(self.calib)
        self.image_scale = float(image_scale)
        T0 = self.sensor_poses[0]
        self.poses = np.linalg.inv(T0) @ self.sensor_poses  # (F', 4, 4) in the first LiDAR frame, first = identity
        self._scans: dict[int, Scan] = {}
        lo, hi = self.scene.prims.aabb()
        self._corners = box_corners(lo, hi)  # (P, 8, 3) world
        self._prim_ids = np.arange(len(self.scene.prims))

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < len(self.sensor_poses):
            raise IndexError(f"frame {frame} out of range: this sequence has poses 0..{len(self.sensor_poses) - 1}")

    def _sensor_corners(self, frame: int, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
        T = self.sensor_poses[frame]
        rel = self._corners - T[:3, 3]
        near = np.linalg.norm(rel[:, :, :2].mean(axis=1), axis=1) < max_dist + 30.0
        local = rel[near] @ T[:3, :3]  # world -> LiDAR frame (rotation transpose)
        return local, self._prim_ids[near]

    def scan(self, frame: int) -> Scan:
        """The LiDAR scan of ``frame`` (cached while the voxel window needs it)."""
        if frame in self._scans:
            return self._scans[frame]
        self._check_frame(frame)
        lid = self.lidar
        T = self.sensor_poses[frame]
        R = T[:3, :3].astype(np.float32)
        dirs_w = lid.dirs @ R.T  # (B, A, 3)
        corners, ids = self._sensor_corners(frame, lid.max_range)
        rects = lid.rects(corners, ids)
        hits = cast_rays(self.scene, T[:3, 3], dirs_w, rects, lid.max_range)
        rng = stream(self.seed, 1, frame)
        t = hits.t
        hit = np.isfinite(t) & (t >= lid.min_range)
        rng_noise = rng.normal(0.0, lid.range_noise, t.shape).astype(np.float32)
        veg = hits.raw == VEGETATION
        rng_noise[veg] += rng.uniform(0.0, 0.35, veg.sum()).astype(np.float32)  # foliage penetration
        measured = t + rng_noise
        refl = REFLECTIVITY[hits.raw]
        refl = np.where((hits.prim >= 0) & (self.scene.prims.tex[np.maximum(hits.prim, 0)] == TEX_GLASS), 0.08, refl)
        cos_inc = np.abs((hits.normal * dirs_w).sum(axis=-1))
        frac = np.where(hit, t, 0.0) / lid.max_range
        p_drop = lid.dropout + 0.25 * frac**2 * (1.0 - refl) + np.where(veg, 0.08, 0.0) + 0.3 * (cos_inc < 0.05)
        keep = hit & (rng.random(t.shape) >= p_drop) & (measured < lid.max_range)
        intensity = refl * (0.35 + 0.65 * cos_inc) * (1.0 - 0.35 * frac) + rng.normal(0, 0.02, t.shape)
        intensity = lid.scale_intensity(np.clip(intensity, 0.0, 0.99).astype(np.float32))
        depth = np.where(keep, measured, np.inf).astype(np.float32)
        r = measured[keep][:, None]
        local = lid.dirs[keep] * r  # (N, 3) LiDAR frame
        points = np.concatenate([local, intensity[keep][:, None]], axis=1).astype(np.float32)
        raw = hits.raw[keep].astype(np.uint32)
        prim = hits.prim[keep]
        inst = np.where(prim >= 0, self.scene.prims.instance[np.maximum(prim, 0)], 0).astype(np.uint32)
        labels = raw | (inst << 16)
        world = (local @ R.T + T[:3, 3]).astype(np.float32)
        scan = Scan(points, labels, depth, world)
        self._scans[frame] = scan
        return scan

    def cloud(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The published point cloud of ``frame``: points (N, 4) and labels (N,) of its scan, with ``fov_only``
        only those that project into the image."""
        sc = self.scan(frame)
        if not self.fov_only:
            return sc.points, sc.labels
        _, _, visible = self.calib.project(sc.points)
        return sc.points[visible], sc.labels[visible]

    def pseudo_labels(self, frame: int, cam: CameraFrame, noise: str = "default") -> np.ndarray:
        """(H, W) uint8 2D pseudo labels of ``frame`` from its rendered ``cam`` at noise level ``noise`` (see
        :mod:`.pseudo_noise`)."""
        return pseudo_labels(self.seed, frame, cam, self.image_scale, noise)

    def render(self, frame: int, camera: CameraModel | None = None) -> CameraFrame:
        """Ray-cast image of ``frame`` seen by ``camera`` (default: the sequence's image_2; any camera whose
        calibration maps this LiDAR frame), with its truth labels, depth and object ids."""
        self._check_frame(frame)
        cam = self.camera if camera is None else camera
        T = self.sensor_poses[frame]
        R = T[:3, :3].astype(np.float32)
        origin = T[:3, :3] @ cam.center + T[:3, 3]
        dirs_w = cam.dirs @ R.T  # (H, W, 3)
        corners, ids = self._sensor_corners(frame, cam.max_range)
        rects = cam.rects(corners, ids)
        hits = cast_rays(self.scene, origin, dirs_w, rects, cam.max_range)
        if self.appearance == "flat":
            image = shade(self.scene, frame, origin, dirs_w, hits)
        else:
            image = realistic_image(self.scene, frame, origin, dirs_w, hits, self.image_scale)
        truth = self.classes.map_raw(hits.raw)
        truth[hits.prim == -2] = IGNORE_INDEX
        obj = np.where(hits.prim >= 0, self.scene.prims.obj[np.maximum(hits.prim, 0)], 0).astype(np.int32)
        return CameraFrame(image, truth, hits.t, obj)

    def _ray_index(self, centers: np.ndarray, voxel_size: float) -> dict[str, np.ndarray]:
        """Which rays of a scan pass near voxel ``centers`` (V, 3) of size ``voxel_size``, given in that scan's
        LiDAR frame.

        Independent of what the scan measured, so the grid's own index (the grid is fixed in the LiDAR frame)
        is computed once. A ray "passes within half a voxel" when its beam elevation and column azimuth are
        within ``0.5 * voxel_size / range`` of the centre's; the two beams around the centre's elevation in
        the nearest column are considered.

        Returns:
            idx: (2, V) int32 flat range-image index of the beams below / above the centre.
            near: (2, V) bool, that ray passes within half a voxel of the centre.
            nearest: (V,) int32 flat index of the nearest ray; fov: (V,) bool, the centre is inside the
            vertical field of view (nearest beam within half a beam spacing); r: (V,) float32 range;
            half: half the voxel size.
        """
        lid = self.lidar
        vs = np.float32(voxel_size)
        x, y, z = (np.ascontiguousarray(centers[:, k], np.float32) for k in range(3))
        rh = np.sqrt(x * x + y * y)
        r = np.sqrt(rh * rh + z * z)
        tan_e = z / np.maximum(rh, np.float32(1e-3))
        tan_asc = np.tan(lid.elevations[::-1]).astype(np.float32)  # (64,) ascending
        n_rows, A = lid.shape
        k = np.searchsorted(tan_asc, tan_e)
        col = ((np.arctan2(y, x) + np.float32(np.pi)) * np.float32(A / (2 * np.pi))).astype(np.int64)
        np.minimum(col, A - 1, out=col)
        slope = np.float32(1.0) + tan_e * tan_e  # d tan / d elevation
        tol = np.float32(0.5) * vs / np.maximum(r, np.float32(1e-3)) * slope
        idx = np.empty((2, len(r)), np.int32)
        near = np.empty((2, len(r)), bool)
        gaps = np.empty((2, len(r)), np.float32)
        for m, kk in enumerate((k - 1, k)):
            kc = np.clip(kk, 0, n_rows - 1)
            gaps[m] = np.where((kk >= 0) & (kk < n_rows), np.abs(tan_asc[kc] - tan_e), np.inf)
            idx[m] = (n_rows - 1 - kc) * A + col
            near[m] = gaps[m] <= tol
        best = gaps[1] < gaps[0]
        half_gap = max(np.deg2rad(0.5), 0.5 * float(np.max(-np.diff(lid.elevations))))  # 0.5 deg up to 64 beams
        fov = np.minimum(gaps[0], gaps[1]) <= np.float32(half_gap) * slope
        nearest = np.where(best, idx[1], idx[0])
        return {"idx": idx, "near": near, "nearest": nearest, "fov": fov, "r": r, "half": np.float32(0.5 * vs)}

    def _seen(self, depth: np.ndarray, ray: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(traversed-or-hit, behind-the-return) per centre of ``ray`` (see :meth:`_ray_index`) for a scan's
        range image ``depth`` (64, A), inf where no return."""
        half = ray["half"]
        d = depth.reshape(-1)
        r = ray["r"]
        seen = (ray["near"][0] & (d[ray["idx"][0]] >= r - half)) | (ray["near"][1] & (d[ray["idx"][1]] >= r - half))
        behind = ray["fov"] & (r > d[ray["nearest"]] + np.float32(1.74) * half)
        return seen, behind

    def voxels(
        self, frame: int, grid: VoxelGrid | None = None, T_sensor_grid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Voxel ground truth of ``frame`` in ``grid`` (default: the sequence's), a grid fixed to the LiDAR by
        ``T_sensor_grid`` (4, 4; grid frame -> LiDAR frame; default identity, the SemanticKITTI convention).

        Returns:
            ``label`` (X, Y, Z) uint16 majority raw label (0 = none), ``invalid`` (never observed by the window),
            ``occluded`` (behind the current scan's returns), ``bin`` (hit by the current scan), bool each.
        """
        grid = self.grid if grid is None else grid
        T_sg = np.eye(4) if T_sensor_grid is None else np.asarray(T_sensor_grid, np.float64)
        poses = self.sensor_poses
        T_gi = np.linalg.inv(poses[frame] @ T_sg)  # scene -> grid frame of the current frame
        window = range(frame, min(frame + self.window * self.stride, len(poses)), self.stride)
        votes = range(frame, min(frame + self.accumulate * self.stride, len(poses)), self.stride)
        pts, raws = [], []
        for j in votes:
            sc = self.scan(j)
            T = T_gi @ poses[j]  # scan j LiDAR -> grid frame
            local = sc.points[:, :3] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
            _, inside = grid.point_indices(local)
            pts.append(local[inside])
            raws.append((sc.labels[inside] & 0xFFFF).astype(np.int64))
        voted = voxelize_labels(grid, np.concatenate(pts), np.concatenate(raws), num_classes=100)  # 255 = none
        label = np.where(voted == IGNORE_INDEX, 0, voted).astype(np.uint16)
        hit_any = (voted != IGNORE_INDEX).reshape(-1)
        centers_grid = grid.centers()  # (X, Y, Z, 3) grid frame
        centers = centers_grid.reshape(-1, 3) @ T_sg[:3, :3].T.astype(np.float32) + T_sg[:3, 3].astype(np.float32)
        # voxels no ray of the window can reach: under the ground, or above the top beam of every scan
        X, Y, Z = grid.shape
        col = centers_grid[:, :, 0, :]  # (X, Y, 3) column centres
        col_pts = np.concatenate([col[..., :2].reshape(-1, 2), np.zeros((X * Y, 1), np.float32)], axis=1)
        T_wg = poses[frame] @ T_sg
        world = col_pts @ T_wg[:3, :3].T + T_wg[:3, 3]  # (X*Y, 3)
        # ground height in the grid along its z axis, which the LiDAR's mounting pitch tilts from the vertical
        cos_tilt = (pitch_transform(self.lidar.pitch) @ T_sg)[2, 2]
        ground_z = (self.scene.ground.height(world[:, 0], world[:, 1]) - world[:, 2]) / cos_tilt
        top = np.tan(self.lidar.elevations[0] + np.deg2rad(1.5 + abs(self.lidar.pitch)))
        h_max = np.full(X * Y, -np.inf)
        for j in window:
            s_j = (T_gi @ poses[j])[:3, 3]  # scan j's sensor in the grid frame
            h_max = np.maximum(h_max, s_j[2] + top * np.hypot(col_pts[:, 0] - s_j[0], col_pts[:, 1] - s_j[1]))
        zc = centers_grid[0, 0, :, 2]  # (Z,)
        reachable = (zc[None, :] >= (ground_z - 0.15)[:, None]) & (zc[None, :] <= (h_max + 0.3)[:, None])
        reachable = reachable.reshape(-1)  # (X*Y*Z,), C order (x, y, z)
        key = (grid, T_sg.tobytes(), self.lidar.azimuth_steps, self.lidar.elevations.tobytes())
        if key not in _GRID_RAYS:
            _GRID_RAYS.clear()  # keep one grid's index (~40 MB)
            _GRID_RAYS[key] = self._ray_index(centers, grid.voxel_size)
        seen, behind = self._seen(self.scan(frame).depth, _GRID_RAYS[key])
        observed = hit_any | (seen & reachable)
        for j in window[1:]:
            cand = np.flatnonzero(reachable & ~observed)
            if cand.size == 0:
                break
            T = np.linalg.inv(poses[j]) @ poses[frame]  # frame LiDAR -> scan j LiDAR
            cj = centers[cand] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
            seen_j, _ = self._seen(self.scan(j).depth, self._ray_index(cj, grid.voxel_size))
            observed[cand[seen_j]] = True
        T_gs = np.linalg.inv(T_sg).astype(np.float32)  # LiDAR -> grid frame
        ijk, _ = grid.point_indices(self.cloud(frame)[0][:, :3] @ T_gs[:3, :3].T + T_gs[:3, 3])
        occ_bin = np.zeros(grid.num_voxels, bool)
        occ_bin[grid.flat_index(ijk)] = True
        return {
            "label": label,
            "invalid": ~observed.reshape(grid.shape),
            "occluded": (behind & ~occ_bin).reshape(grid.shape),
            "bin": occ_bin.reshape(grid.shape),
        }

    def forget_before(self, frame: int) -> None:
        """Drop cached scans older than ``frame``."""
        for k in [k for k in self._scans if k < frame]:
            del self._scans[k]

    def camera_poses(self) -> np.ndarray:
        """(frames, 4, 4) cam0 poses in the first cam0 frame (``poses.txt``)."""
        Tr = self.calib.T_cam_lidar
        return Tr @ self.poses[: self.frames] @ np.linalg.inv(Tr)
