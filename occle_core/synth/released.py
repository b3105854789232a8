"""Writers of released dataset layouts: a tiny, exactly formatted nuScenes v1.0 tree with Occ3D-nuScenes beside it.

:func:`write_nuscenes_replica` writes what the real dataset holds, at toy size: the thirteen v1.0 tables with their
real field names (``scene``, ``sample``, ``sample_data``, ``calibrated_sensor``, ``ego_pose``, ``sensor``, ``log``,
``map``, ``category``, ``attribute``, ``visibility``, ``instance``, ``sample_annotation``; the annotation tables
empty, as in v1.0-test), ``samples/<CHANNEL>/`` key frames (six JPEG cameras, ``LIDAR_TOP`` ``.pcd.bin``),
``sweeps/LIDAR_TOP/`` intermediate sweeps, a ``maps/`` semantic-prior PNG, and the Occ3D ``gts/<scene>/<sample
token>/labels.npz`` with an ``annotations.json``. The rig follows the real one: LIDAR_TOP 1.84 m up with its x axis
to the right and y forward, six cameras around the roof with their own yaw, tilt and intrinsics, each sensor sampled
at its own time while the vehicle drives on a curve, so that every camera has its own ego pose.

:func:`write_nuscenes` writes given content (:class:`SceneContent`: per scene a trajectory and lazily produced
:class:`KeyFrame` s with points, six images, sweeps, Occ3D occupancy and 2D pseudo labels); the synthetic world comes
this way (:mod:`occle_core.synth.surround`). :func:`write_nuscenes_replica` writes generated content: key-frame
points given in the ego frame (or generated) and written in the sensor frame; sweeps that observe a static set of
world points, so motion compensation maps every sweep onto the same world.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from transforms3d.euler import euler2mat
from transforms3d.quaternions import mat2quat

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
OCC3D_SHAPE = (200, 200, 16)
OCC3D_FREE = 17
KEY_INTERVAL_US = 500_000  # key frames at 2 Hz
START_US = 1531883530449377
# LIDAR_TOP as mounted on the nuScenes cars: 0.94 m ahead of the rear axle, 1.84 m up, x right / y forward / z up
LIDAR_MOUNT = ((0.943713, 0.0, 1.84023), -np.pi / 2)
# per camera: mount position (m, ego frame), yaw (rad), focal length at 1600 px width, trigger offset (us) from the
# LiDAR stamp. As on the real cars, a camera fires when the LIDAR_TOP sweep passes its centre and the LiDAR is
# stamped at the end of its 50 ms sweep: the six key-frame images are ~8 ms apart, 0-45 ms before the LiDAR
CAMERA_RIG = {
    "CAM_FRONT": ((1.70079, 0.01594, 1.51095), 0.0, 1266.4, -37_500),
    "CAM_FRONT_RIGHT": ((1.55085, -0.49340, 1.49575), np.radians(-55.0), 1260.8, -29_500),
    "CAM_FRONT_LEFT": ((1.52387, 0.49463, 1.50932), np.radians(55.0), 1272.6, -45_000),
    "CAM_BACK": ((0.02832, 0.00345, 1.57910), np.pi, 809.2, -12_500),
    "CAM_BACK_LEFT": ((1.03569, 0.48430, 1.59097), np.radians(110.0), 1256.7, -4_500),
    "CAM_BACK_RIGHT": ((1.01485, -0.48056, 1.56239), np.radians(-110.0), 1259.5, -21_000),
}
# camera axes (x right, y down, z forward) expressed in the ego frame (x forward, y left, z up) at zero yaw
CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
VISIBILITY = [
    {"description": "visibility of whole object is between 0 and 40%", "token": "1", "level": "v0-40"},
    {"description": "visibility of whole object is between 40 and 60%", "token": "2", "level": "v40-60"},
    {"description": "visibility of whole object is between 60 and 80%", "token": "3", "level": "v60-80"},
    {"description": "visibility of whole object is between 80 and 100%", "token": "4", "level": "v80-100"},
]


@dataclass
class Replica:
    """What :func:`write_nuscenes_replica` wrote, for tests to compare against.

    Attributes:
        root: the data root; version: the table folder name.
        samples: sample tokens in write order; scene_of: sample token -> scene name.
        points: sample token -> (N, 5) float32 key-frame points in the ego frame (x, y, z, intensity, ring).
        images: sample token -> channel -> (H, W, 3) uint8 image given to the writer (stored as JPEG).
        occupancy: sample token -> (semantics, mask_lidar, mask_camera), each (200, 200, 16) uint8.
        world: (M, 3) static world points that the intermediate sweeps observe (global frame).
    """

    root: Path
    version: str
    samples: list[str] = field(default_factory=list)
    scene_of: dict[str, str] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    occupancy: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    world: np.ndarray | None = None


@dataclass
class KeyFrame:
    """The content of one key frame for :func:`write_nuscenes`.

    Attributes:
        points: (N, 4|5) float32 LIDAR_TOP points in the key frame's ego frame (x, y, z, intensity[, ring]).
        images: channel -> (H, W, 3) uint8 image, one per camera of :data:`CAMERAS`.
        occupancy: (semantics, mask_lidar, mask_camera), (200, 200, 16) each, or None (no Occ3D file).
        sweeps: (timestamp us, (M, 4|5) points in the ego frame at that time) of the LiDAR sweeps since the
            previous key frame, in time order.
        pseudo: channel -> (H, W) uint8 Occ3D-class 2D pseudo labels (255 = none), or None.
    """

    points: np.ndarray
    images: dict[str, np.ndarray]
    occupancy: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    sweeps: list[tuple[int, np.ndarray]] = field(default_factory=list)
    pseudo: dict[str, np.ndarray] | None = None


@dataclass
class SceneContent:
    """One scene for :func:`write_nuscenes`: key frames every :data:`KEY_INTERVAL_US` from ``t0``.

    Attributes:
        name: the scene name (the official ``scene-NNNN`` names decide Occ3D's train / val split).
        n_samples: number of key frames; frames: the key frames, produced lazily in time order.
        pose_at: timestamp (us) -> (4, 4) T_global<-ego of the vehicle.
        t0: timestamp of the first key frame (us).
        lidar_mount: (4, 4) T_ego<-LIDAR_TOP (sensor x right, y forward), the real mount by default.
        description: the scene record's description.
    """

    name: str
    n_samples: int
    frames: Iterable[KeyFrame]
    pose_at: Callable[[int], np.ndarray]
    t0: int = START_US
    lidar_mount: np.ndarray = field(default_factory=lambda: lidar_extrinsic())
    description: str = ""


def _transform(translation: Sequence[float], R: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = translation
    return T


def _record_pose(token: str, T: np.ndarray, **extra) -> dict:
    """A table record with ``translation`` and ``rotation`` (unit quaternion w, x, y, z) of a (4, 4) transform."""
    return {"token": token, **extra, "rotation": mat2quat(T[:3, :3]).tolist(), "translation": T[:3, 3].tolist()}


def ego_pose_at(t_us: int, scene_index: int = 0) -> np.ndarray:
    """(4, 4) ego -> global pose of the replica's vehicle at time ``t_us``: 8 m/s on a gentle left curve."""
    t = (t_us - START_US) * 1e-6
    yaw0, omega, v = 0.3 + scene_index, 0.08, 8.0
    yaw = yaw0 + omega * t
    x = 600.0 + 50.0 * scene_index + v / omega * (np.sin(yaw) - np.sin(yaw0))
    y = 1600.0 - v / omega * (np.cos(yaw) - np.cos(yaw0))
    R = euler2mat(0.01 * np.sin(3.0 * t), 0.015 * np.cos(2.0 * t), yaw, "sxyz")
    return _transform((x, y, 0.05 * np.sin(t)), R)


def lidar_extrinsic() -> np.ndarray:
    """(4, 4) T_ego<-LIDAR_TOP of the replica (the real mount: 1.84 m up, sensor x right, y forward)."""
    return _transform(LIDAR_MOUNT[0], euler2mat(0.0, 0.0, LIDAR_MOUNT[1], "sxyz"))


def camera_extrinsic(channel: str) -> np.ndarray:
    """(4, 4) T_ego<-camera of the replica: the mount's yaw and a small downward tilt and roll."""
    pos, yaw, _, _ = CAMERA_RIG[channel]
    return _transform(pos, euler2mat(0.004, 0.02, yaw, "sxyz") @ CAM_AXES)


def camera_intrinsic(channel: str, image_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) K of ``channel`` for an image of ``image_size`` (H, W): the real focal length scaled to the width."""
    h, w = image_size
    f = CAMERA_RIG[channel][2] * w / 1600.0
    return np.array([[f, 0.0, 0.51 * w], [0.0, f, 0.497 * h], [0.0, 0.0, 1.0]])


def _generated_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 5) ego-frame points on the ground and on walls around the vehicle (x, y, z, intensity, ring)."""
    r = rng.uniform(3.0, 35.0, n)
    a = rng.uniform(-np.pi, np.pi, n)
    z = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 4.0, n))
    return np.stack([r * np.cos(a), r * np.sin(a), z, rng.integers(0, 256, n), rng.integers(0, 32, n)], 1).astype(
        np.float32
    )


def _generated_image(rng: np.random.Generator, size: tuple[int, int], cam: int) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 40 * cam)], -1)
    return np.clip(base + rng.integers(-2, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def _generated_occupancy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sem = np.full(OCC3D_SHAPE, OCC3D_FREE, np.uint8)
    sem[:, :, 2] = 11  # driveable surface at about -0.2 m
    objects = rng.random(OCC3D_SHAPE) < 0.01
    sem[objects] = rng.integers(0, 17, int(objects.sum()))
    mask_lidar = (rng.random(OCC3D_SHAPE) < 0.7).astype(np.uint8)
    mask_camera = (mask_lidar.astype(bool) & (rng.random(OCC3D_SHAPE) < 0.6)).astype(np.uint8)
    return sem, mask_lidar, mask_camera


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=0))


class _TreeWriter:
    """Builds the tables while writing the sensor files; one instance per replica."""

    def __init__(self, root: Path, rng: np.random.Generator, image_size: tuple[int, int]) -> None:
        self.root, self.rng, self.image_size = root, rng, image_size
        self.sensors = {ch: {"token": self.token(), "channel": ch, "modality": "camera"} for ch in CAMERAS}
        self.sensors[LIDAR] = {"token": self.token(), "channel": LIDAR, "modality": "lidar"}
        names = ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data")
        self.tables: dict[str, list[dict]] = {name: [] for name in names}
        self.calib: dict[str, dict] = {}  # channel -> calibrated_sensor record of the current scene
        self.last: dict[str, dict | None] = {}  # channel -> previous sample_data (the prev / next chains)
        self.scene_index, self.logfile = 0, ""
        self.pose_at: Callable[[int], np.ndarray] = ego_pose_at
        self.lidar_mount = lidar_extrinsic()

    def token(self) -> str:
        return self.rng.bytes(16).hex()

    def start_scene(self, scene_index: int, content: SceneContent) -> dict:
        """A new log with its own calibrated_sensor records (as every nuScenes scene has); returns the log."""
        self.scene_index, self.pose_at, self.lidar_mount = scene_index, content.pose_at, content.lidar_mount
        self.logfile = f"n015-2018-07-{18 + scene_index:02d}-11-07-57+0800"
        log = {"token": self.token(), "logfile": self.logfile, "vehicle": "n015",
               "date_captured": self.logfile[5:15], "location": "singapore-onenorth"}  # fmt: skip
        self.tables["log"].append(log)
        for ch, sensor in self.sensors.items():
            T = self.lidar_mount if ch == LIDAR else camera_extrinsic(ch)
            K = [] if ch == LIDAR else camera_intrinsic(ch, self.image_size).tolist()
            self.calib[ch] = _record_pose(self.token(), T, sensor_token=sensor["token"], camera_intrinsic=K)
            self.tables["calibrated_sensor"].append(self.calib[ch])
        self.last = dict.fromkeys(self.sensors)
        return log

    def add_data(self, ch: str, t_us: int, sample_token: str, is_key: bool, filename: str) -> dict:
        """The ego_pose and sample_data records of one sensor reading (linked into its channel's chain)."""
        pose = _record_pose(self.token(), self.pose_at(t_us), timestamp=t_us)
        self.tables["ego_pose"].append(pose)
        h, w = (0, 0) if ch == LIDAR else self.image_size
        prev = self.last[ch]
        rec = {
            "token": self.token(), "sample_token": sample_token, "ego_pose_token": pose["token"],
            "calibrated_sensor_token": self.calib[ch]["token"], "timestamp": t_us,
            "fileformat": "pcd" if ch == LIDAR else "jpg", "is_key_frame": is_key, "height": h, "width": w,
            "filename": filename, "prev": prev["token"] if prev else "", "next": "",
        }  # fmt: skip
        if prev:
            prev["next"] = rec["token"]
        self.last[ch] = rec
        self.tables["sample_data"].append(rec)
        return rec

    def lidar(self, folder: str, t_us: int, sample_token: str, ego_points: np.ndarray) -> dict:
        """Write (N, 5) ego-frame points as a LIDAR_TOP ``.pcd.bin`` in the sensor frame; returns its record."""
        filename = f"{folder}/{LIDAR}/{self.logfile}__{LIDAR}__{t_us}.pcd.bin"
        inv = np.linalg.inv(self.lidar_mount)
        sensor = np.empty((len(ego_points), 5), np.float32)
        sensor[:, :3] = ego_points[:, :3].astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
        sensor[:, 3:] = ego_points[:, 3:5]
        (self.root / filename).parent.mkdir(parents=True, exist_ok=True)
        sensor.tofile(self.root / filename)
        return self.add_data(LIDAR, t_us, sample_token, folder == "samples", filename)

    def camera(self, ch: str, t_key: int, sample_token: str, image: np.ndarray) -> dict:
        """Write one key-frame JPEG; returns its Occ3D ``camera_sensor`` entry."""
        t_us = t_key + CAMERA_RIG[ch][3]
        filename = f"samples/{ch}/{self.logfile}__{ch}__{t_us}.jpg"
        (self.root / filename).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.root / filename, quality=95)
        rec = self.add_data(ch, t_us, sample_token, True, filename)
        cs = self.calib[ch]
        return {
            "img_path": f"{ch}/{Path(filename).name}", "intrinsics": cs["camera_intrinsic"],
            "extrinsic": {"translation": cs["translation"], "rotation": cs["rotation"]},
            "ego_pose": next(p for p in reversed(self.tables["ego_pose"]) if p["token"] == rec["ego_pose_token"]),
        }  # fmt: skip

    def finish(self, version: str) -> None:
        """Write the thirteen tables and the map mask."""
        map_token = self.token()
        map_file = f"maps/{map_token}.png"
        (self.root / "maps").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(self.root / map_file)
        self.tables["sensor"] = list(self.sensors.values())
        self.tables["map"] = [{"category": "semantic_prior", "token": map_token, "filename": map_file,
                               "log_tokens": [r["token"] for r in self.tables["log"]]}]  # fmt: skip
        self.tables["visibility"] = VISIBILITY
        for name in ("category", "attribute", "instance", "sample_annotation"):
            self.tables[name] = []
        for name, records in self.tables.items():
            _write_json(self.root / version / f"{name}.json", records)


def _checked_frame(frame: int, key: KeyFrame, image_size: tuple[int, int]) -> KeyFrame:
    """``key`` with (N, 5) float32 points and uint8 occupancy; ValueError naming the frame and field otherwise."""
    points = np.asarray(key.points, np.float32)
    if points.ndim != 2 or points.shape[1] not in (4, 5):
        raise ValueError(f"points[{frame}]: expected an (N, 4) or (N, 5) array, got {points.shape}")
    points = np.c_[points, np.zeros((len(points), 5 - points.shape[1]), np.float32)]
    for ch in CAMERAS:
        img = np.asarray(key.images.get(ch, np.zeros(0)))
        if img.shape != (*image_size, 3) or img.dtype != np.uint8:
            raise ValueError(f"images[{frame}][{ch!r}]: expected {(*image_size, 3)} uint8, got {img.shape}")
    occ = key.occupancy
    if occ is not None:
        occ = tuple(np.asarray(a) for a in occ)
        if len(occ) != 3 or any(a.shape != OCC3D_SHAPE for a in occ):
            raise ValueError(f"occupancy[{frame}]: expected three {OCC3D_SHAPE} arrays")
        occ = tuple(a.astype(np.uint8) for a in occ)
    for ch, lab in (key.pseudo or {}).items():
        if lab.shape != image_size or lab.dtype != np.uint8:
            raise ValueError(f"pseudo[{frame}][{ch!r}]: expected {image_size} uint8, got {lab.shape} {lab.dtype}")
    return KeyFrame(points, key.images, occ, key.sweeps, key.pseudo)


def write_nuscenes(
    root: str | Path,
    version: str,
    scenes: Iterable[SceneContent],
    image_size: tuple[int, int],
    occ3d: bool = True,
    seed: int = 0,
    keep: bool = True,
) -> Replica:
    """Write ``scenes`` as a nuScenes v1.0 tree (tables, ``samples/``, ``sweeps/``, ``maps/``) under ``root``,
    with Occ3D-nuScenes beside it (``gts/``, ``annotations.json``) and ``pseudo_2d/<scene>/<token>/<CHANNEL>.png``.

    Args:
        version: the table folder (``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``).
        image_size: (H, W) of every camera image.
        occ3d: write ``gts/`` and ``annotations.json`` (key frames without occupancy get no ``labels.npz``).
        seed: the seed of the tokens.
        keep: keep the points, images and occupancy in the returned :class:`Replica` (tests); False keeps tokens.

    Raises:
        ValueError: a key frame's array of the wrong shape (naming the frame, counted over all scenes, and field),
            or a scene whose number of frames differs from its ``n_samples``.
    """
    from occle_core.data.label_png import write_label_png
    from occle_core.data.nuscenes import scene_splits

    root = Path(root)
    rng = np.random.default_rng(seed)
    out = Replica(root, version)
    writer = _TreeWriter(root, rng, image_size)
    infos: dict[str, dict] = {}
    names: list[str] = []
    frame = 0
    for si, content in enumerate(scenes):
        scene_name, n = content.name, content.n_samples
        names.append(scene_name)
        log = writer.start_scene(si, content)
        tokens = [writer.token() for _ in range(n)]
        scene = {"token": writer.token(), "log_token": log["token"], "nbr_samples": n,
                 "first_sample_token": tokens[0], "last_sample_token": tokens[-1], "name": scene_name,
                 "description": content.description}  # fmt: skip
        writer.tables["scene"].append(scene)
        infos[scene_name] = {}
        k = -1
        for k, key in enumerate(content.frames):
            if k >= n:
                raise ValueError(f"scene {scene_name!r}: more key frames than its n_samples ({n})")
            key = _checked_frame(frame, key, image_size)
            sample_token, t_key = tokens[k], content.t0 + k * KEY_INTERVAL_US
            prev, nxt = tokens[k - 1] if k else "", tokens[k + 1] if k + 1 < n else ""
            writer.tables["sample"].append(
                {"token": sample_token, "timestamp": t_key, "prev": prev, "next": nxt, "scene_token": scene["token"]}
            )
            # the sweeps since the previous key frame, tied to this sample as nuScenes ties them
            for t_sweep, sweep in key.sweeps:
                sweep = np.asarray(sweep, np.float32)
                sweep = np.c_[sweep, np.zeros((len(sweep), 5 - sweep.shape[1]), np.float32)]
                writer.lidar("sweeps", t_sweep, sample_token, sweep)
            writer.lidar("samples", t_key, sample_token, key.points)
            lidar_pose = writer.tables["ego_pose"][-1]  # the key frame's, written with it
            out.samples.append(sample_token)
            out.scene_of[sample_token] = scene_name
            cams = {ch: writer.camera(ch, t_key, sample_token, np.asarray(key.images[ch])) for ch in CAMERAS}
            for ch, lab in (key.pseudo or {}).items():
                write_label_png(root / "pseudo_2d" / scene_name / sample_token / f"{ch}.png", lab)
            if keep:
                out.points[sample_token] = key.points
                out.images[sample_token] = {ch: np.asarray(key.images[ch]) for ch in CAMERAS}
                if key.occupancy is not None:
                    out.occupancy[sample_token] = key.occupancy
            gt_path = f"gts/{scene_name}/{sample_token}/labels.npz"
            if occ3d and key.occupancy is not None:
                (root / gt_path).parent.mkdir(parents=True, exist_ok=True)
                sem, mask_lidar, mask_camera = key.occupancy
                np.savez_compressed(root / gt_path, semantics=sem, mask_lidar=mask_lidar, mask_camera=mask_camera)
            infos[scene_name][sample_token] = {
                "timestamp": t_key, "camera_sensor": cams, "ego_pose": lidar_pose, "gt_path": gt_path,
                "prev": prev or "EOF", "next": nxt or "EOF",
            }  # fmt: skip
            frame += 1
        if k + 1 != n:
            raise ValueError(f"scene {scene_name!r}: {k + 1} key frames, expected its n_samples ({n})")
    writer.finish(version)
    if occ3d:
        splits = scene_splits()
        train = splits["mini_train" if version == "v1.0-mini" else "train"]
        val = splits["mini_val" if version == "v1.0-mini" else "val"]
        doc = {"train_split": [s for s in names if s in train], "val_split": [s for s in names if s in val],
               "scene_infos": infos}  # fmt: skip
        _write_json(root / "annotations.json", doc)
    return out


def write_nuscenes_replica(
    root: str | Path,
    version: str = "v1.0-mini",
    scenes: Sequence[str] = ("scene-0061",),
    samples_per_scene: int = 3,
    sweeps_between: int = 2,
    image_size: tuple[int, int] = (90, 160),
    points: Sequence[np.ndarray] | None = None,
    images: Sequence[dict[str, np.ndarray]] | None = None,
    occupancy: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    occ3d: bool = True,
    seed: int = 0,
) -> Replica:
    """Write a tiny nuScenes v1.0 tree (and Occ3D-nuScenes beside it) of generated content under ``root``.

    The vehicle drives :func:`ego_pose_at`; sweeps observe a static set of world points (``Replica.world``).

    Args:
        version: the table folder (``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``).
        scenes: scene names (e.g. the official ``scene-0061``; Occ3D's train/val split follows the official one).
        samples_per_scene: key frames per scene (2 Hz); sweeps_between: LiDAR sweeps between two key frames.
        image_size: (H, W) of every camera image.
        points: one (N, 4|5) array per key frame (all scenes, in order) in that key frame's ego frame, x, y, z,
            intensity[, ring]; generated when None.
        images: one ``{channel: (H, W, 3) uint8}`` per key frame; generated when None.
        occupancy: one (semantics, mask_lidar, mask_camera) per key frame, (200, 200, 16) each; generated when
            None.
        occ3d: also write ``gts/`` and ``annotations.json``.

    Raises:
        ValueError: a given array of the wrong shape, or sequences whose length is not one per key frame.
    """
    rng = np.random.default_rng([seed, 1])
    n_frames = len(scenes) * samples_per_scene
    for name, given in (("points", points), ("images", images), ("occupancy", occupancy)):
        if given is not None and len(given) != n_frames:
            raise ValueError(f"{name}: expected one entry per key frame ({n_frames}), got {len(given)}")
    world = np.c_[rng.uniform(-60, 60, (400, 2)) + (620.0, 1610.0), rng.uniform(0, 3, 400)]

    def frames(si: int, t0: int) -> Iterable[KeyFrame]:
        for k in range(samples_per_scene):
            frame, t_key = si * samples_per_scene + k, t0 + k * KEY_INTERVAL_US
            sweeps = []
            for j in range(1, sweeps_between + 1 if k else 1):
                t_sweep = t_key - KEY_INTERVAL_US + j * KEY_INTERVAL_US // (sweeps_between + 1)
                ego = np.linalg.inv(ego_pose_at(t_sweep, si)) @ np.c_[world, np.ones(len(world))].T  # (4, M)
                extra = np.c_[rng.integers(0, 256, len(world)), np.full(len(world), j)]
                sweeps.append((t_sweep, np.c_[ego[:3].T, extra].astype(np.float32)))
            pts = _generated_points(rng, 600) if points is None else points[frame]
            imgs = (
                {ch: _generated_image(rng, image_size, ci) for ci, ch in enumerate(CAMERAS)}
                if images is None
                else images[frame]
            )
            occ = _generated_occupancy(rng) if occupancy is None else occupancy[frame]
            yield KeyFrame(pts, imgs, occ, sweeps)

    contents = []
    for si, name in enumerate(scenes):
        t0 = START_US + si * 100 * KEY_INTERVAL_US
        pose_at = functools.partial(ego_pose_at, scene_index=si)
        contents.append(SceneContent(name, samples_per_scene, frames(si, t0), pose_at, t0,
                                     description="replica: gentle left curve, static walls"))  # fmt: skip
    out = write_nuscenes(root, version, contents, image_size, occ3d, seed)
    out.world = world
    return out
