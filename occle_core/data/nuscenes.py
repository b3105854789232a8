"""Reader of nuScenes v1.0 as released: the JSON tables, ``samples/`` and ``sweeps/``; no nuscenes-devkit needed.

Layout (``<root>`` is the nuScenes data root)::

    <root>/v1.0-trainval/ (or v1.0-mini/, v1.0-test/)
        scene.json              token, log_token, nbr_samples, first_sample_token, last_sample_token, name, description
        sample.json             token, timestamp, prev, next, scene_token
        sample_data.json        token, sample_token, ego_pose_token, calibrated_sensor_token, timestamp, fileformat,
                                is_key_frame, height, width, filename, prev, next
        calibrated_sensor.json  token, sensor_token, translation [x, y, z], rotation [w, x, y, z],
                                camera_intrinsic (3x3; [] for non-cameras)
        ego_pose.json           token, timestamp, rotation [w, x, y, z], translation [x, y, z]
        sensor.json             token, channel, modality
        log.json                token, logfile, vehicle, date_captured, location
        (category, attribute, visibility, instance, sample_annotation, map: not read here)
    <root>/samples/<CHANNEL>/<file>   key frames: ``.jpg`` images, ``.pcd.bin`` LiDAR sweeps
    <root>/sweeps/<CHANNEL>/<file>    the intermediate sweeps

Frames: ``calibrated_sensor`` maps the sensor frame to the ego (vehicle) frame, ``ego_pose`` the ego frame to the
global frame at the sample_data's own timestamp. The reader returns everything in the ego frame of the LIDAR_TOP key
frame (x forward, y left, z up: the Occ3D grid frame). Each camera is taken at its own time, so its
``T_cam<-grid = inv(T_ego<-cam) @ inv(T_global<-ego(t_cam)) @ T_global<-ego(t_lidar)``, as the devkit's
``map_pointcloud_to_image`` chains it. Multi-sweep LiDAR goes sensor -> ego(t_sweep) -> global -> ego(t_key), as
its ``LidarPointCloud.from_file_multisweep``; the per-point time lag (seconds, >= 0) is a column of its own.

Splits: the official scene-name lists (``config/nuscenes_splits.yaml``: train / val / test of v1.0-trainval and
v1.0-test, mini_train / mini_val of v1.0-mini).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from torch.utils.data import Dataset
from transforms3d.quaternions import quat2mat

from occle_core.data.sample import CameraView, Sample
from occle_core.geometry import Calib
from occle_core.resources import config_path

VERSIONS = ("v1.0-trainval", "v1.0-mini", "v1.0-test")
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
PCD_FIELDS = 5  # x, y, z, intensity, ring
POINT_COLUMNS = ("x", "y", "z", "intensity", "ring", "time_lag")
SPLIT_FILE = "nuscenes_splits.yaml"
# the fields this reader uses, per table (the released tables hold these and more)
FIELDS = {
    "scene": ("token", "log_token", "nbr_samples", "first_sample_token", "last_sample_token", "name"),
    "sample": ("token", "timestamp", "prev", "next", "scene_token"),
    "sample_data": (
        "token",
        "sample_token",
        "ego_pose_token",
        "calibrated_sensor_token",
        "timestamp",
        "fileformat",
        "is_key_frame",
        "height",
        "width",
        "filename",
        "prev",
        "next",
    ),  # fmt: skip
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "ego_pose": ("token", "timestamp", "rotation", "translation"),
    "sensor": ("token", "channel", "modality"),
    "log": ("token", "logfile", "vehicle", "date_captured", "location"),
}


def read_pcd_bin(path: str | Path, fields: int = PCD_FIELDS) -> np.ndarray:
    """Read a nuScenes LiDAR ``.pcd.bin``: (N, fields) float32 (x, y, z, intensity, ring) in the sensor frame.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the size is not a multiple of ``fields * 4`` bytes (a truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    size = path.stat().st_size
    if size % (fields * 4):
        raise ValueError(
            f"{path}: {size} bytes is not a multiple of {fields * 4} ({fields} float32 per point); "
            f"the file is truncated or has another record layout"
        )
    return np.fromfile(path, np.float32).reshape(-1, fields)


def pose_matrix(record: dict, where: str = "record") -> np.ndarray:
    """(4, 4) float64 transform of a table record's ``translation`` [x, y, z] and ``rotation`` [w, x, y, z].

    Raises:
        ValueError: naming ``where`` and the field when it is not 3 / 4 finite numbers or not a unit quaternion.
    """
    t = _numbers(record, "translation", 3, where)
    q = _numbers(record, "rotation", 4, where)
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > 1e-3:
        raise ValueError(f"{where}: field 'rotation' must be a unit quaternion [w, x, y, z], has norm {norm:.6f}")
    T = np.eye(4)
    T[:3, :3] = quat2mat(q)
    T[:3, 3] = t
    return T


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON document at ``path``.

    Raises:
        FileNotFoundError: naming ``what`` and the path; ValueError: the file is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def camera_intrinsic(calibrated_sensor: dict, channel: str, where: str) -> np.ndarray:
    """(3, 3) float64 ``camera_intrinsic`` of a camera's calibrated_sensor record.

    Raises:
        ValueError: naming ``where``, the record's token and the field when it is not a finite 3x3 matrix with
            positive focal lengths.
    """
    K = np.asarray(calibrated_sensor.get("camera_intrinsic"), np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(
            f"{where}/calibrated_sensor.json {calibrated_sensor.get('token')}: field 'camera_intrinsic' must be a "
            f"3x3 matrix with positive focal lengths for {channel}, got {calibrated_sensor.get('camera_intrinsic')!r}"
        )
    return K


def _numbers(record: dict, key: str, n: int, where: str) -> np.ndarray:
    try:
        v = np.asarray(record[key], np.float64)
    except KeyError:
        raise ValueError(f"{where}: missing field {key!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {key!r} must be {n} numbers, got {record[key]!r}") from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{where}: field {key!r} must be {n} finite numbers, got {record[key]!r}")
    return v


def load_table(table_root: str | Path, name: str) -> list[dict]:
    """Records of ``<table_root>/<name>.json``, each checked for the fields in :data:`FIELDS`.

    Raises:
        FileNotFoundError: the table is missing.
        ValueError: not a JSON list of objects, or a record lacks a field (file, record index and field named).
    """
    path = Path(table_root) / f"{name}.json"
    records = read_json(path, "nuScenes table")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is a {type(rec).__name__}, expected an object")
        missing = [f for f in FIELDS.get(name, ("token",)) if f not in rec]
        if missing:
            raise ValueError(f"{path}: record {i} (token {rec.get('token')!r}) lacks field {missing[0]!r}")
    return records


@cache
def scene_splits() -> dict[str, tuple[str, ...]]:
    """The official nuScenes scene splits: ``{"train", "val", "test", "mini_train", "mini_val"}`` -> scene names."""
    doc = yaml.safe_load(config_path(SPLIT_FILE).read_text())
    return {k: tuple(v) for k, v in doc.items()}


def split_scenes(version: str, split: str) -> tuple[str, ...]:
    """Scene names of ``split`` in ``version``: ``train`` / ``val`` (v1.0-mini: mini_train / mini_val), ``test``.

    Raises:
        ValueError: an unknown version, or a split that the version does not have.
    """
    if version not in VERSIONS:
        raise ValueError(f"nuScenes version must be one of {VERSIONS}, got {version!r}")
    names = {
        "v1.0-trainval": {"train": "train", "val": "val"},
        "v1.0-mini": {"train": "mini_train", "val": "mini_val", "mini_train": "mini_train", "mini_val": "mini_val"},
        "v1.0-test": {"test": "test"},
    }[version]
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)} for {version}, got {split!r}")
    return scene_splits()[names[split]]


def find_version(root: str | Path) -> str:
    """The one nuScenes version whose tables are under ``root`` (v1.0-trainval first when several are).

    Raises:
        FileNotFoundError: no ``v1.0-*`` table folder under ``root``.
    """
    for v in VERSIONS:
        if (Path(root) / v / "sample.json").is_file():
            return v
    raise FileNotFoundError(f"no nuScenes tables under {root} (looked for {', '.join(v + '/' for v in VERSIONS)})")


class NuScenesTables:
    """The tables of one nuScenes version, indexed for the key frames, their cameras and the LiDAR sweeps.

    Only the LIDAR_TOP sample_data (key frames and sweeps) and the key-frame camera records are kept, with their
    ego poses and calibrations: the camera sweeps and radar records, most of ``sample_data.json``, are dropped.

    Args:
        root: the nuScenes data root (holding ``<version>/``, ``samples/``, ``sweeps/``).
        version: ``v1.0-trainval``, ``v1.0-mini`` or ``v1.0-test``; None: :func:`find_version`.

    Raises:
        FileNotFoundError / ValueError: a missing table, a malformed record or a dangling token, named.
    """

    def __init__(self, root: str | Path, version: str | None = None) -> None:
        self.root = Path(root)
        self.version = find_version(self.root) if version is None else version
        if self.version not in VERSIONS:
            raise ValueError(f"nuScenes version must be one of {VERSIONS}, got {self.version!r}")
        table_root = self.root / self.version
        tables = {name: load_table(table_root, name) for name in FIELDS}
        self.scenes = tables["scene"]
        self.scene_by_name = {s["name"]: s for s in self.scenes}
        self.scene_by_token = {s["token"]: s for s in self.scenes}
        self.logs = {r["token"]: r for r in tables["log"]}
        self.samples = {r["token"]: r for r in tables["sample"]}
        channel_of = {r["token"]: r["channel"] for r in tables["sensor"]}
        calibs = {r["token"]: r for r in tables["calibrated_sensor"]}
        wanted = set(CAMERAS) | {LIDAR}
        self.lidar_data: dict[str, dict] = {}  # LIDAR_TOP sample_data by token
        self.key_data: dict[tuple[str, str], dict] = {}  # (sample token, channel) -> key-frame sample_data
        for rec in tables["sample_data"]:
            cs = lookup(calibs, rec["calibrated_sensor_token"], "calibrated_sensor", table_root, rec)
            channel = lookup(channel_of, cs["sensor_token"], "sensor", table_root, cs)
            if channel not in wanted or not (rec["is_key_frame"] or channel == LIDAR):
                continue
            if channel == LIDAR:
                self.lidar_data[rec["token"]] = rec
            if rec["is_key_frame"]:
                self.key_data[(rec["sample_token"], channel)] = rec
        kept = [*self.lidar_data.values(), *(r for (_, c), r in self.key_data.items() if c != LIDAR)]
        pose_tokens = {r["ego_pose_token"] for r in kept}
        calib_tokens = {r["calibrated_sensor_token"] for r in kept}
        self.poses = {
            r["token"]: pose_matrix(r, f"{table_root}/ego_pose.json {r['token']}")
            for r in tables["ego_pose"]
            if r["token"] in pose_tokens
        }
        self.calibs = {t: calibs[t] for t in calib_tokens}
        self.extrinsics = {t: pose_matrix(calibs[t], f"{table_root}/calibrated_sensor.json {t}") for t in calib_tokens}
        lost = pose_tokens - self.poses.keys()
        if lost:
            raise ValueError(f"{table_root}/ego_pose.json: {len(lost)} ego_pose_token(s) not found, e.g. {min(lost)}")

    def scene_samples(self, scene_name: str) -> list[str]:
        """Sample tokens of a scene in time order (``first_sample_token`` then ``next``).

        Raises:
            KeyError: the scene is not in this version.
        """
        if scene_name not in self.scene_by_name:
            raise KeyError(f"scene {scene_name!r} is not in {self.root / self.version}/scene.json")
        tokens, token = [], self.scene_by_name[scene_name]["first_sample_token"]
        while token:
            tokens.append(token)
            token = self.samples[token]["next"]
        return tokens

    def scene_name(self, sample_token: str) -> str:
        """Name of the scene holding ``sample_token``."""
        return self.scene_by_token[self._sample(sample_token)["scene_token"]]["name"]

    def _sample(self, token: str) -> dict:
        if token not in self.samples:
            raise KeyError(f"sample token {token!r} is not in {self.root / self.version}/sample.json")
        return self.samples[token]

    def key_record(self, sample_token: str, channel: str) -> dict:
        """The key-frame sample_data of ``channel`` in a sample.

        Raises:
            KeyError: the sample or its ``channel`` record is missing.
        """
        self._sample(sample_token)
        if (sample_token, channel) not in self.key_data:
            raise KeyError(f"sample {sample_token} has no key-frame {channel} in {self.root / self.version}")
        return self.key_data[(sample_token, channel)]

    def sensor_to_global(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """(T_ego<-sensor, T_global<-ego) of a sample_data record, (4, 4) each."""
        return self.extrinsics[record["calibrated_sensor_token"]], self.poses[record["ego_pose_token"]]

    def lidar_points(self, sample_token: str, sweeps: int = 1, min_distance: float = 0.0) -> np.ndarray:
        """LIDAR_TOP points of a sample in its ego frame, with ``sweeps - 1`` earlier sweeps motion-compensated.

        Args:
            sweeps: how many sweeps to merge, the key frame included (detectors use 10); fewer when the
                sample_data chain starts sooner.
            min_distance: drop points with both |x| and |y| below it in their sensor frame (the devkit's
                ``remove_close``); 0 keeps all.

        Returns:
            (N, 6) float32 x, y, z (ego frame of the key frame), intensity (as stored, 0..255), ring,
            time lag in seconds (key-frame time minus sweep time, >= 0), key frame first.
        """
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        key = self.key_record(sample_token, LIDAR)
        T_ego_key, T_global_key = self.sensor_to_global(key)
        ego_from_global = np.linalg.inv(T_global_key)
        parts, rec = [], key
        for _ in range(sweeps):
            raw = read_pcd_bin(self.root / rec["filename"])  # (n, 5) sensor frame
            if min_distance > 0:
                raw = raw[~((np.abs(raw[:, 0]) < min_distance) & (np.abs(raw[:, 1]) < min_distance))]
            T_ego, T_global = self.sensor_to_global(rec)
            T = ego_from_global @ T_global @ T_ego if rec is not key else T_ego  # sensor -> ego(t_key)
            out = np.empty((len(raw), len(POINT_COLUMNS)), np.float32)
            out[:, :3] = raw[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
            out[:, 3:5] = raw[:, 3:5]
            out[:, 5] = 1e-6 * (key["timestamp"] - rec["timestamp"])
            parts.append(out)
            if not rec["prev"]:
                break
            rec = lookup(self.lidar_data, rec["prev"], "LIDAR_TOP sample_data", self.root / self.version, rec)
        return np.concatenate(parts, axis=0)

    def camera(self, sample_token: str, channel: str) -> tuple[Path, Calib, int]:
        """Image path, calibration (``T_cam_lidar`` = T_cam<-ego of the LiDAR key frame) and timestamp of a camera.

        Raises:
            ValueError: ``camera_intrinsic`` is not a 3x3 matrix with positive focal lengths (field named).
        """
        rec = self.key_record(sample_token, channel)
        T_ego_cam, T_global_cam = self.sensor_to_global(rec)
        _, T_global_lidar = self.sensor_to_global(self.key_record(sample_token, LIDAR))  # grid = ego(t_lidar)
        T_cam_grid = np.linalg.inv(T_ego_cam) @ np.linalg.inv(T_global_cam) @ T_global_lidar
        K = camera_intrinsic(self.calibs[rec["calibrated_sensor_token"]], channel, str(self.root / self.version))
        P = np.hstack([K, np.zeros((3, 1))])
        size = (int(rec["height"]), int(rec["width"]))
        return self.root / rec["filename"], Calib(P, T_cam_grid, size), int(rec["timestamp"])

    def sample(
        self,
        sample_token: str,
        sweeps: int = 1,
        cameras: Sequence[str] = CAMERAS,
        intensity_scale: float = 1.0,
        min_distance: float = 0.0,
    ) -> Sample:
        """A :class:`Sample` of a key frame: every camera (image, K, T_cam<-grid), the LiDAR in the ego frame.

        ``frame_id`` is ``<scene name>/<sample token>`` (the Occ3D gts layout); ``pose`` is the grid (ego at the
        LiDAR time) -> global transform; ``extras`` hold ``scene``, ``sample_token``, ``location`` (of the log),
        ``camera_timestamps_us`` and ``lidar_origin``: the LIDAR_TOP position in the grid frame (its
        calibrated_sensor translation, about (0.94, 0, 1.84) m), where the rays of the scan start.
        Points: :meth:`lidar_points` with the intensity multiplied by ``intensity_scale``.

        Raises:
            FileNotFoundError / ValueError: a missing file, or an image whose size differs from its record.
        """
        points = self.lidar_points(sample_token, sweeps, min_distance)
        points[:, 3] *= intensity_scale
        views, stamps = [], {}
        for channel in cameras:
            path, calib, stamp = self.camera(sample_token, channel)
            if not path.is_file():
                raise FileNotFoundError(f"camera image not found: {path}")
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
            if image.shape[:2] != calib.image_size:
                raise ValueError(
                    f"{path}: image is {image.shape[:2]} (H, W) but its sample_data says height, width = "
                    f"{calib.image_size}"
                )
            views.append(CameraView(channel, image, calib))
            stamps[channel] = stamp
        lidar = self.key_record(sample_token, LIDAR)
        T_ego_lidar, T_global_ego = self.sensor_to_global(lidar)
        # The grid is the ego frame at the key-frame LiDAR time, so the key-frame mount is T_ego<-lidar's
        # translation. With sweeps > 1 the older sweeps' rays really started where the mount was then (up to
        # ~4.5 m behind at 10 m/s over 10 sweeps); every ray is cast from the key-frame mount all the same (one
        # origin per sample): the training readers of build_dataset / build_label_free read one sweep.
        origin = tuple(float(v) for v in T_ego_lidar[:3, 3])
        scene = self.scene_by_token[self._sample(sample_token)["scene_token"]]
        location = lookup(self.logs, scene["log_token"], "log", self.root / self.version, scene)["location"]
        return Sample(
            f"{scene['name']}/{sample_token}",
            points,
            views,
            grid_frame="ego",
            pose=T_global_ego,
            timestamp_us=int(lidar["timestamp"]),
            extras={
                "scene": scene["name"],
                "sample_token": sample_token,
                "location": location,
                "camera_timestamps_us": stamps,
                "lidar_origin": origin,
            },  # fmt: skip
        )


def lookup(index: dict, token: str, what: str, where: Path | str, record: dict) -> Any:
    """``index[token]``; ValueError naming the table root, the referring record and the missing ``what`` token."""
    if token not in index:
        raise ValueError(f"{where}: record {record.get('token')!r} refers to {what} token {token!r}, which is missing")
    return index[token]


class NuScenesDataset(Dataset):
    """nuScenes key frames as :class:`Sample` objects (no voxel labels; see ``occ3d.Occ3DDataset`` for those).

    Args:
        root: the nuScenes data root.
        version: ``v1.0-trainval`` / ``v1.0-mini`` / ``v1.0-test``; None: the one found under ``root``.
        split: ``"train"`` / ``"val"`` / ``"test"`` (the official scene split of the version), a list of scene
            names, or None for every scene of the version.
        sweeps: LiDAR sweeps per sample, the key frame included (their rays: from the key-frame mount, see
            :meth:`NuScenesTables.sample`).
        cameras: the channels to read, the front camera first.
        intensity_scale: factor applied to the intensity (default 1/255: nuScenes stores 0..255).
        min_distance: see :meth:`NuScenesTables.lidar_points`.
    """

    def __init__(
        self,
        root: str | Path,
        version: str | None = None,
        split: str | Sequence[str] | None = None,
        sweeps: int = 1,
        cameras: Sequence[str] = CAMERAS,
        intensity_scale: float = 1.0 / 255.0,
        min_distance: float = 0.0,
    ) -> None:
        self.tables = NuScenesTables(root, version)
        if split is None:
            scenes = [s["name"] for s in self.tables.scenes]
        elif isinstance(split, str):
            scenes = [s for s in split_scenes(self.tables.version, split) if s in self.tables.scene_by_name]
        else:
            scenes = list(split)
        self.tokens = [t for s in scenes for t in self.tables.scene_samples(s)]
        if not self.tokens:
            raise ValueError(f"no nuScenes sample selected under {root} ({self.tables.version}, split {split!r})")
        self.sweeps, self.cameras = int(sweeps), tuple(cameras)
        self.intensity_scale, self.min_distance = float(intensity_scale), float(min_distance)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self.tables.sample(
            self.tokens[index], self.sweeps, self.cameras, self.intensity_scale, self.min_distance
        )
