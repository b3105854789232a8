"""The synthetic world seen by a nuScenes-style rig: six surround cameras, LIDAR_TOP and the ego-frame Occ3D grid.

Rig (:class:`SurroundRig`): the six cameras of nuScenes with the mounts and focal lengths of
:data:`occle_core.synth.released.CAMERA_RIG` (yaws 0, -55, 55, 180, 110, -110 deg, about 1.5 m up; horizontal
field of view 64.6 deg, CAM_BACK 89.3 deg, from the released focal lengths at 1600 px), images of 900 x 1600
pixels scaled by ``image_scale``, and a 32-beam HDL-32E pattern as LIDAR_TOP (1.84 m up, 0.94 m ahead of the rear
axle; 1084 columns, nuScenes' 0..255 intensities). The ego frame is the vehicle's (x forward, y left, z up) with
its origin on the road under the rear axle.

Frames (:class:`SurroundSequence`): the synthetic world runs at 10 Hz; a key frame every ``key_stride`` (5)
frames, i.e. at nuScenes' 2 Hz, and the frames between two key frames are its LiDAR sweeps. Every camera is
rendered at its key frame's pose (the synthetic cameras fire with the LiDAR).

Occ3D ground truth of a key frame (:meth:`SurroundSequence.occupancy`): the SemanticKITTI-style accumulation of
:meth:`SyntheticSequence.voxels` in the ego-frame grid [-40, 40] x [-40, 40] x [-1, 5.4] m at 0.4 m
(200 x 200 x 16); voxel classes mapped to Occ3D's through :data:`OCC3D_OF_LEARNING`, 17 = free; ``mask_lidar``:
voxels hit or traversed by the window's LiDAR rays; ``mask_camera``: voxels visible from at least one camera
(:func:`occle_core.synth.visibility.camera_visibility`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from transforms3d.euler import euler2mat

from occle_core.geometry import OCC3D_GRID, Calib
from occle_core.labels import IGNORE_INDEX, class_table
from occle_core.synth.pseudo_noise import NOISE_LEVELS, pseudo_labels
from occle_core.synth.released import (
    CAMERAS,
    KEY_INTERVAL_US,
    LIDAR_MOUNT,
    START_US,
    KeyFrame,
    SceneContent,
    camera_extrinsic,
    camera_intrinsic,
)
from occle_core.synth.sensors import CameraModel, LidarModel, beam_elevations, pitch_transform
from occle_core.synth.sequence import SyntheticSequence
from occle_core.synth.visibility import camera_visibility

NUSCENES_IMAGE_SIZE = (900, 1600)
OCC3D_FREE = 17
FRAME_US = 100_000  # the synthetic world's 10 Hz
#: SemanticKITTI learning class (what the synthetic world labels) -> Occ3D-nuScenes class.
OCC3D_OF_LEARNING = {
    "car": "car",
    "bicycle": "bicycle",
    "motorcycle": "motorcycle",
    "truck": "truck",
    "other-vehicle": "bus",  # the world's only other vehicle is the bus
    "person": "pedestrian",
    "bicyclist": "bicycle",  # nuScenes boxes a bicycle with its rider
    "motorcyclist": "motorcycle",
    "road": "driveable_surface",  # lane markings included
    "parking": "driveable_surface",
    "sidewalk": "sidewalk",
    "other-ground": "other_flat",
    "building": "manmade",
    "fence": "manmade",
    "vegetation": "vegetation",
    "trunk": "vegetation",
    "terrain": "terrain",
    "pole": "manmade",
    "traffic-sign": "manmade",
}


def occ3d_lut() -> np.ndarray:
    """(256,) uint8 map SemanticKITTI learning class -> Occ3D class (:data:`OCC3D_OF_LEARNING`); 0 (unlabeled)
    -> 17 (free), 255 stays 255."""
    kitti, occ = class_table("semantic_kitti"), class_table("occ3d_nuscenes")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[0] = OCC3D_FREE
    for src, dst in OCC3D_OF_LEARNING.items():
        lut[kitti.names.index(src)] = occ.names.index(dst)
    return lut


def nuscenes_lidar(azimuth_steps: int = 1084, height: float = LIDAR_MOUNT[0][2], **kw) -> LidarModel:
    """The LIDAR_TOP model: HDL-32E beams, nuScenes intensities; ``kw`` go to :class:`LidarModel`."""
    return LidarModel(azimuth_steps, beam_elevations(32), height=height, intensity="nuscenes", **kw)


class SurroundRig:
    """The six cameras and the LiDAR mount of a nuScenes car, for the synthetic LiDAR ``lidar``.

    Attributes:
        image_size: (H, W) of every image.
        T_ego_sensor: (4, 4) synthetic LiDAR frame (x forward, pitched by ``lidar.pitch``) -> ego frame.
        lidar_mount: (4, 4) T_ego<-LIDAR_TOP (sensor x right, y forward), the calibrated_sensor record.
        calibs: channel -> :class:`Calib` with ``T_cam_lidar`` = T_cam<-ego (the Occ3D grid frame).
        cameras: channel -> :class:`CameraModel` in the synthetic LiDAR frame (what the renderer takes).
    """

    def __init__(self, lidar: LidarModel, image_scale: float = 1.0) -> None:
        if not 0 < image_scale <= 4:
            raise ValueError(f"image_scale must be in (0, 4], got {image_scale}")
        h, w = (max(8, round(n * image_scale)) for n in NUSCENES_IMAGE_SIZE)
        self.image_size = (h, w)
        mount = np.eye(4)
        mount[:3, 3] = (LIDAR_MOUNT[0][0], LIDAR_MOUNT[0][1], lidar.height)
        self.T_ego_sensor = mount @ pitch_transform(lidar.pitch)
        self.lidar_mount = self.T_ego_sensor.copy()
        self.lidar_mount[:3, :3] = self.T_ego_sensor[:3, :3] @ euler2mat(0.0, 0.0, LIDAR_MOUNT[1], "sxyz")
        self.calibs: dict[str, Calib] = {}
        self.cameras: dict[str, CameraModel] = {}
        for ch in CAMERAS:
            P = np.c_[camera_intrinsic(ch, self.image_size), np.zeros(3)]
            T_cam_ego = np.linalg.inv(camera_extrinsic(ch))
            self.calibs[ch] = Calib(P, T_cam_ego, self.image_size)
            self.cameras[ch] = CameraModel(Calib(P, T_cam_ego @ self.T_ego_sensor, self.image_size))


class SurroundSequence:
    """A synthetic sequence seen by the surround rig, key frame by key frame.

    Args:
        seed: scene and noise seed.
        keys: number of key frames (2 Hz).
        image_scale: image size relative to 900 x 1600.
        appearance: ``flat`` or ``realistic`` (see :class:`SyntheticSequence`).
        lidar: the LIDAR_TOP model (default :func:`nuscenes_lidar`).
        key_stride: synthetic frames (10 Hz) from one key frame to the next; those between are sweeps.
        window, stride, accumulate: the ground-truth accumulation of :class:`SyntheticSequence` (in synthetic
            frames): ``window`` scans decide ``mask_lidar``, ``accumulate`` (10: 2 s ahead) vote the classes.
        visibility_step_deg: spacing of the camera rays of ``mask_camera``.
        t0: timestamp (us) of the first key frame.
        pseudo_noise: the 2D pseudo-label noise level (:data:`occle_core.synth.pseudo_noise.NOISE_LEVELS`).
    """

    def __init__(
        self,
        seed: int,
        keys: int,
        image_scale: float = 1.0,
        appearance: str = "flat",
        lidar: LidarModel | None = None,
        key_stride: int = 5,
        window: int = 5,
        stride: int = 2,
        accumulate: int = 10,
        visibility_step_deg: float = 0.5,
        t0: int = START_US,
        pseudo_noise: str = "default",
    ) -> None:
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if key_stride < 1:
            raise ValueError(f"key_stride must be >= 1, got {key_stride}")
        lidar = nuscenes_lidar() if lidar is None else lidar
        self.rig = SurroundRig(lidar, image_scale)
        self.keys, self.key_stride = int(keys), int(key_stride)
        self.image_scale = float(image_scale)
        self.visibility_step_deg = float(visibility_step_deg)
        self.t0 = int(t0)
        if pseudo_noise not in NOISE_LEVELS:
            raise ValueError(f"pseudo_noise must be one of {NOISE_LEVELS}, got {pseudo_noise!r}")
        self.pseudo_noise = pseudo_noise
        frames = (self.keys - 1) * self.key_stride + 1
        self.seq = SyntheticSequence(
            seed, frames, image_scale, lidar, window, stride, OCC3D_GRID, accumulate, appearance=appearance
        )
        self.lut = occ3d_lut()

    def ego_pose(self, frame: int) -> np.ndarray:
        """(4, 4) T_scene<-ego of synthetic frame ``frame`` (the scene frame is the written global frame)."""
        return self.seq.sensor_poses[frame] @ np.linalg.inv(self.rig.T_ego_sensor)

    def pose_at(self, t_us: int) -> np.ndarray:
        """(4, 4) T_scene<-ego at time ``t_us``: the pose of the nearest synthetic frame."""
        frame = int(np.clip(round((t_us - self.t0) / FRAME_US), 0, len(self.seq.sensor_poses) - 1))
        return self.ego_pose(frame)

    def points(self, frame: int) -> np.ndarray:
        """(N, 5) float32 LiDAR points of synthetic frame ``frame`` in its ego frame: x, y, z, intensity, ring."""
        scan = self.seq.scan(frame)
        T = self.rig.T_ego_sensor.astype(np.float32)
        ring = np.nonzero(np.isfinite(scan.depth))[0]  # beam of each return, in the scan's row-major order
        xyz = scan.points[:, :3] @ T[:3, :3].T + T[:3, 3]
        return np.c_[xyz, scan.points[:, 3], ring].astype(np.float32)

    def key_frame(self, key: int) -> KeyFrame:
        """Key frame ``key``: points, the six images with Occ3D-class pseudo labels, sweeps and occupancy."""
        frame = key * self.key_stride
        images, pseudo = {}, {}
        for ci, ch in enumerate(CAMERAS):
            cam = self.seq.render(frame, self.rig.cameras[ch])
            images[ch] = cam.image
            noisy = pseudo_labels(self.seq.seed, frame * len(CAMERAS) + ci, cam, self.image_scale, self.pseudo_noise)
            pseudo[ch] = self.lut[noisy]
        t_key = self.t0 + key * KEY_INTERVAL_US
        first = frame - self.key_stride + 1 if key else frame  # the first key frame has no sweeps
        sweeps = [(t_key - (frame - f) * FRAME_US, self.points(f)) for f in range(first, frame)]
        out = KeyFrame(self.points(frame), images, self.occupancy(frame), sweeps, pseudo)
        self.seq.forget_before(frame + 1)
        return out

    def occupancy(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(semantics, mask_lidar, mask_camera) of synthetic frame ``frame``, (200, 200, 16) uint8 each."""
        vox = self.seq.voxels(frame, OCC3D_GRID, np.linalg.inv(self.rig.T_ego_sensor))
        learning = self.seq.classes.map_raw(vox["label"])
        sem = self.lut[learning]
        sem[sem == IGNORE_INDEX] = 0  # hit, but of no mapped class: "others"
        mask_camera = camera_visibility(sem != OCC3D_FREE, OCC3D_GRID, list(self.rig.calibs.values()),
                                        self.visibility_step_deg)  # fmt: skip
        return sem, (~vox["invalid"]).astype(np.uint8), mask_camera.astype(np.uint8)

    def frames(self) -> Iterator[KeyFrame]:
        """Every key frame in order, produced one at a time."""
        for key in range(self.keys):
            yield self.key_frame(key)

    def content(self, name: str) -> SceneContent:
        """The sequence as a scene of :func:`occle_core.synth.released.write_nuscenes`."""
        desc = f"occle synthetic world: seed {self.seq.seed}, {self.seq.scene.layout}, {self.seq.appearance} images"
        return SceneContent(name, self.keys, self.frames(), self.pose_at, self.t0, self.rig.lidar_mount, desc)


def scene_names(n: int) -> list[str]:
    """``n`` official v1.0-trainval scene names, so that Occ3D's split applies: the first ``n - n // 5`` from the
    train split, the rest (at least one when ``n >= 2``) from the val split."""
    from occle_core.data.nuscenes import split_scenes

    n_val = max(n // 5, 1) if n >= 2 else 0
    return [*split_scenes("v1.0-trainval", "train")[: n - n_val], *split_scenes("v1.0-trainval", "val")[:n_val]]


def write_surround(out: str | Path, scenes: int, keys: int, seed: int = 0, progress: bool = True, **kw) -> list[str]:
    """Write ``scenes`` synthetic scenes of ``keys`` key frames each as nuScenes v1.0-trainval with Occ3D-nuScenes
    beside it under ``out`` (:func:`occle_core.synth.released.write_nuscenes`), plus ``synthetic.json``.

    Scene ``i`` is the world of seed ``seed + i`` under the name ``scene_names(scenes)[i]``; ``kw`` go to
    :class:`SurroundSequence`. Returns the sample tokens in write order.
    """
    from tqdm import tqdm

    from occle_core.synth.released import write_nuscenes

    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    names = scene_names(scenes)
    seqs = [SurroundSequence(seed + i, keys, t0=START_US + i * 10**9, **kw) for i in range(scenes)]
    bar = tqdm(total=scenes * keys, desc="occle-synth", unit="frame", disable=not progress)

    def counted(seq: SurroundSequence) -> Iterator[KeyFrame]:
        for key in seq.frames():
            bar.update()
            yield key

    contents = [dataclasses.replace(s.content(name), frames=counted(s)) for s, name in zip(seqs, names)]
    replica = write_nuscenes(out, "v1.0-trainval", contents, seqs[0].rig.image_size, seed=seed, keep=False)
    bar.close()
    s0 = seqs[0]
    meta = {
        "generator": "occle_core.synth.surround",
        "seed": seed,
        "scenes": dict(zip(names, [s.seq.seed for s in seqs])),
        "key_frames": keys,
        "key_stride": s0.key_stride,
        "image_size": list(s0.rig.image_size),
        "appearance": s0.seq.appearance,
        "beams": len(s0.seq.lidar.elevations),
        "azimuth_steps": s0.seq.lidar.azimuth_steps,
        "lidar_height": s0.seq.lidar.height,
        "window": s0.seq.window,
        "window_stride": s0.seq.stride,
        "accumulate": s0.seq.accumulate,
        "visibility_step_deg": s0.visibility_step_deg,
        "pseudo_noise": s0.pseudo_noise,
        "occ3d_of_learning": OCC3D_OF_LEARNING,
    }
    (Path(out) / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return replica.samples
