"""``occle-nuscenes2bag``: one scene of nuScenes v1.0 (as released) as a ROS 2 bag (mcap), no devkit needed.

The topic layout is the one of the well-known converters (foxglove's nuscenes2mcap / nuscenes2bag):

- ``/CAM_<NAME>/image_rect_compressed``  sensor_msgs/CompressedImage, ``jpeg``, the stored JPEG bytes as they are,
  frame ``CAM_<NAME>``
- ``/CAM_<NAME>/camera_info``            sensor_msgs/CameraInfo: K = ``camera_intrinsic``, P = [K | 0], D = 0
  (plumb_bob; nuScenes images are undistorted), R = I, height / width of the sample_data record
- ``/LIDAR_TOP``                         sensor_msgs/PointCloud2, float32 ``x y z intensity ring`` (the ``.pcd.bin``
  bytes as stored), frame ``LIDAR_TOP``
- ``/tf_static``                         tf2_msgs/TFMessage, once: ``base_link -> <channel>`` for every channel
  written, from its ``calibrated_sensor`` (one per channel and log), offered transient-local as ``ros2 bag record``
  stores it
- ``/tf``                                ``map -> base_link``: the ``ego_pose`` of every sample_data written, at its
  timestamp.

Every message is stamped (header and bag time) with its sample_data's ``timestamp`` (microseconds -> ns).
Key frames only by default; ``--sweeps`` adds the intermediate (non-key) camera and LiDAR sample_data of the scene.
Radar channels are not written (the model does not use them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from occle_core.data.nuscenes import CAMERAS, LIDAR, VERSIONS, _lookup, load_table, pose_matrix, read_pcd_bin
from occle_ros.bag_writer import BagWriter

MAP_FRAME, BASE_FRAME = "map", "base_link"
LIDAR_FIELDS = ("x", "y", "z", "intensity", "ring")
TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor")


def image_topic(channel: str) -> str:
    """``/CAM_FRONT/image_rect_compressed`` of a camera channel."""
    return f"/{channel}/image_rect_compressed"


def camera_info_topic(channel: str) -> str:
    """``/CAM_FRONT/camera_info`` of a camera channel."""
    return f"/{channel}/camera_info"


class SceneRecords:
    """The sample_data records of one scene (cameras and LIDAR_TOP), in time order, with what they refer to.

    Raises:
        FileNotFoundError / ValueError: a missing table or a dangling token (file and token named); KeyError: an
        unknown scene name (the known ones listed).
    """

    def __init__(self, root: str | Path, version: str, scene: str, sweeps: bool = False) -> None:
        if version not in VERSIONS:
            raise ValueError(f"nuScenes version must be one of {VERSIONS}, got {version!r}")
        self.root = Path(root)
        table_root = self.root / version
        tables = {name: load_table(table_root, name) for name in TABLES}
        scenes = {s["name"]: s for s in tables["scene"]}
        if scene not in scenes:
            raise KeyError(f"scene {scene!r} is not in {table_root}/scene.json (it has {', '.join(sorted(scenes))})")
        scene_token = scenes[scene]["token"]
        samples = {s["token"] for s in tables["sample"] if s["scene_token"] == scene_token}
        channel_of = {s["token"]: s["channel"] for s in tables["sensor"]}
        self.calibs = {c["token"]: c for c in tables["calibrated_sensor"]}
        self.poses = {p["token"]: p for p in tables["ego_pose"]}
        wanted = {*CAMERAS, LIDAR}
        self.records: list[tuple[str, dict]] = []  # (channel, sample_data) in time order
        for rec in tables["sample_data"]:
            if rec["sample_token"] not in samples or not (sweeps or rec["is_key_frame"]):
                continue
            calib = _lookup(self.calibs, rec["calibrated_sensor_token"], "calibrated_sensor", table_root, rec)
            channel = _lookup(channel_of, calib["sensor_token"], "sensor", table_root, calib)
            if channel in wanted:
                _lookup(self.poses, rec["ego_pose_token"], "ego_pose", table_root, rec)
                self.records.append((channel, rec))
        if not self.records:
            raise ValueError(f"scene {scene!r} of {table_root} has no camera or {LIDAR} sample_data")
        self.records.sort(key=lambda cr: (cr[1]["timestamp"], cr[0]))
        self.where = table_root

    def extrinsics(self) -> dict[str, np.ndarray]:
        """``{channel: T_base_link<-sensor}`` (4, 4) of every channel in the scene.

        Raises:
            ValueError: a channel whose calibration changes within the scene (a static transform cannot say that).
        """
        out: dict[str, tuple[str, np.ndarray]] = {}
        for channel, rec in self.records:
            token = rec["calibrated_sensor_token"]
            if channel in out and out[channel][0] != token:
                raise ValueError(
                    f"{self.where}/sample_data.json: {channel} uses calibrated_sensor {out[channel][0]} and {token} "
                    f"within one scene; expected one calibration per channel"
                )
            if channel not in out:
                out[channel] = (token, pose_matrix(self.calibs[token], f"{self.where}/calibrated_sensor.json {token}"))
        return {channel: T for channel, (_, T) in out.items()}

    def intrinsic(self, rec: dict, channel: str) -> np.ndarray:
        """(3, 3) ``camera_intrinsic`` of a camera record; ValueError naming the field when it is not 3x3 finite."""
        cs = self.calibs[rec["calibrated_sensor_token"]]
        K = np.asarray(cs["camera_intrinsic"], np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(
                f"{self.where}/calibrated_sensor.json {cs['token']}: field 'camera_intrinsic' must be a 3x3 matrix "
                f"with positive focal lengths for {channel}, got {cs['camera_intrinsic']!r}"
            )
        return K

    def ego_pose(self, rec: dict) -> np.ndarray:
        """(4, 4) T_map<-base_link of a record's ``ego_pose``."""
        token = rec["ego_pose_token"]
        return pose_matrix(self.poses[token], f"{self.where}/ego_pose.json {token}")


def write_scene_bag(
    root: str | Path,
    version: str,
    scene: str,
    out: str | Path,
    sweeps: bool = False,
    storage: str = "mcap",
    distro: str = "ros2_humble",
    progress: bool = True,
) -> dict[str, int]:
    """Write ``scene`` of the nuScenes tree ``root`` to the ROS 2 bag folder ``out``; returns messages per topic.

    Raises:
        FileNotFoundError / ValueError / KeyError: naming the missing or malformed table, file or scene;
        FileExistsError: ``out`` exists.
    """
    from tqdm import tqdm

    scene_data = SceneRecords(root, version, scene, sweeps)
    extrinsics = scene_data.extrinsics()
    start = int(scene_data.records[0][1]["timestamp"]) * 1000
    with BagWriter(out, storage=storage, distro=distro) as bag:
        static = [(BASE_FRAME, channel, T) for channel, T in sorted(extrinsics.items())]
        bag.write("/tf_static", bag.tf(static, start), start)
        records = tqdm(scene_data.records, desc=f"occle-nuscenes2bag {scene}", unit="record", disable=not progress)
        for channel, rec in records:
            stamp = int(rec["timestamp"]) * 1000  # microseconds -> ns
            path = scene_data.root / rec["filename"]
            bag.write("/tf", bag.tf([(MAP_FRAME, BASE_FRAME, scene_data.ego_pose(rec))], stamp), stamp)
            if channel == LIDAR:
                points = read_pcd_bin(path)  # (N, 5) float32, sensor frame
                bag.write("/" + LIDAR, bag.pointcloud(points, LIDAR_FIELDS, stamp, LIDAR), stamp)
                continue
            if not path.is_file():
                raise FileNotFoundError(f"camera image not found: {path}")
            K = scene_data.intrinsic(rec, channel)
            size = (int(rec["height"]), int(rec["width"]))
            bag.write(image_topic(channel), bag.compressed_image(path.read_bytes(), "jpeg", stamp, channel), stamp)
            info = bag.camera_info(K, np.hstack([K, np.zeros((3, 1))]), size, stamp, channel)
            bag.write(camera_info_topic(channel), info, stamp)
        return dict(bag.counts)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occle-nuscenes2bag``."""
    p = argparse.ArgumentParser(prog="occle-nuscenes2bag", description="Write one nuScenes scene as a ROS 2 bag.")
    p.add_argument("--data", required=True, help="nuScenes root (holding v1.0-*/, samples/, sweeps/)")
    p.add_argument("--version", default="v1.0-mini", choices=VERSIONS, help="table version (default v1.0-mini)")
    p.add_argument("--scene", required=True, help="scene name, e.g. scene-0061")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--sweeps", action="store_true", help="also write the non-key camera and LiDAR sample_data")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    from rosbags.typesys import Stores

    distros = [s.value for s in Stores if s.value.startswith("ros2") or s.value == "latest"]
    p.add_argument("--distro", default="ros2_humble", choices=distros, help="message definitions (default humble)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-nuscenes2bag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        counts = write_scene_bag(
            args.data, args.version, args.scene, args.out, args.sweeps, args.storage, args.distro, not args.quiet
        )
    except KeyError as exc:
        print(f"occle-nuscenes2bag: error: {exc.args[0]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"occle-nuscenes2bag: error: {exc}", file=sys.stderr)
        return 1
    frames = counts.get("/" + LIDAR, 0)
    print(f"occle-nuscenes2bag: wrote {sum(counts.values())} messages ({frames} LiDAR scans) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
