"""``occle-kitti2bag``: write a ROS 2 bag (mcap) from a SemanticKITTI / KITTI-odometry-layout sequence.

Topics (names are options, the defaults follow the ROS 1 ``kitti2bag`` tool):

- ``/kitti/camera_color_left/image_raw``   sensor_msgs/Image rgb8 (``image_2``)
- ``/kitti/camera_color_left/camera_info`` sensor_msgs/CameraInfo (P = P2 of ``calib.txt``, no distortion)
- ``/kitti/velo/pointcloud``               sensor_msgs/PointCloud2 x, y, z, intensity float32
- ``/tf_static``                           tf2_msgs/TFMessage: ``velo_link`` -> ``camera_color_left`` (once)
- ``/tf``                                  tf2_msgs/TFMessage: ``world`` -> ``velo_link`` per frame (poses.txt)

Stamps are ``--start-stamp`` plus ``times.txt`` (or ``frame / --rate`` when there is no times.txt or ``--rate``
is given). The bag is written with rosbags (no ROS installation needed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_typestore
from transforms3d.quaternions import mat2quat

DEFAULT_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
}
LIDAR_FRAME = "velo_link"
CAMERA_FRAME = "camera_color_left"
WORLD_FRAME = "world"


class _Msgs:
    """rosbags message builders (typestore ``LATEST``)."""

    def __init__(self) -> None:
        self.store = get_typestore(Stores.LATEST)
        self.t = self.store.types

    def header(self, stamp_ns: int, frame_id: str):
        return self.t["std_msgs/msg/Header"](
            stamp=self.t["builtin_interfaces/msg/Time"](
                sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
            ),
            frame_id=frame_id,
        )

    def image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str):
        h, w, _ = rgb.shape
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(rgb, np.uint8).reshape(-1),
        )

    def camera_info(self, P: np.ndarray, hw: tuple[int, int], stamp_ns: int, frame_id: str):
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id),
            height=int(hw[0]),
            width=int(hw[1]),
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=np.asarray(P, np.float64)[:, :3].reshape(-1).copy(),
            r=np.eye(3).reshape(-1),
            p=np.asarray(P, np.float64).reshape(-1).copy(),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def cloud(self, points: np.ndarray, stamp_ns: int, frame_id: str):
        pf = self.t["sensor_msgs/msg/PointField"]
        fields = [pf(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(("x", "y", "z", "intensity"))]
        pts = np.ascontiguousarray(points[:, :4], "<f4")  # (N, 4)
        return self.t["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, frame_id),
            height=1,
            width=pts.shape[0],
            fields=fields,
            is_bigendian=False,
            point_step=16,
            row_step=16 * pts.shape[0],
            data=pts.view(np.uint8).reshape(-1),
            is_dense=True,
        )

    def tf(self, T: np.ndarray, stamp_ns: int, parent: str, child: str):
        """TFMessage with one transform: pose of ``child`` in ``parent`` (maps child points to parent)."""
        q = mat2quat(np.asarray(T, np.float64)[:3, :3])  # (w, x, y, z)
        t = self.t
        tr = t["geometry_msgs/msg/Transform"](
            translation=t["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=t["geometry_msgs/msg/Quaternion"](x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0])),
        )
        ts = t["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=tr
        )
        return t["tf2_msgs/msg/TFMessage"](transforms=[ts])


def frame_stamps(seq_dir: Path, frames: Sequence[str], start_stamp: float, rate: float | None) -> np.ndarray:
    """(F,) int64 nanosecond stamps of ``frames``: start + times.txt, or start + index / rate."""
    from occle_core.data.semantic_kitti import read_times

    idx = np.asarray([int(f) for f in frames], np.int64)
    times_path = seq_dir / "times.txt"
    if rate is None and times_path.is_file():
        times = read_times(times_path)
        if len(times) <= idx.max():
            raise ValueError(f"{times_path}: {len(times)} timestamps, expected at least {idx.max() + 1}")
        secs = times[idx]
    else:
        secs = idx / float(rate or 10.0)
    return int(round(start_stamp * 1e9)) + np.round(secs * 1e9).astype(np.int64)  # integer ns, no float drift


def write_bag(
    root: str | Path,
    sequence: str,
    out: str | Path,
    frames: int | None = None,
    rate: float | None = None,
    start_stamp: float = 1_700_000_000.0,
    topics: dict[str, str] | None = None,
    storage: str = "mcap",
) -> int:
    """Convert one sequence to a ROS 2 bag; returns the number of frames written.

    Raises:
        FileNotFoundError / ValueError: from the dataset reader (naming the file), or ``out`` already exists.
    """
    from occle_core.data.semantic_kitti import SemanticKittiDataset, sequence_dir

    topics = {**DEFAULT_TOPICS, **(topics or {})}
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output bag {out} already exists (rosbag2 writes a new folder)")
    seq_dir = sequence_dir(root, sequence)
    ds = SemanticKittiDataset(root, [seq_dir.name], with_labels=False, pseudo_dir="")
    n = len(ds) if frames is None else min(int(frames), len(ds))
    if n < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    names = [f for _, f in ds.frames[:n]]
    stamps = frame_stamps(seq_dir, names, start_stamp, rate)
    m = _Msgs()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        conn = {
            key: writer.add_connection(topics[key], typ, typestore=m.store)
            for key, typ in (
                ("image", "sensor_msgs/msg/Image"),
                ("camera_info", "sensor_msgs/msg/CameraInfo"),
                ("points", "sensor_msgs/msg/PointCloud2"),
            )
        }
        tf_static = writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=m.store)
        tf = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=m.store)

        def put(c, msg, stamp: int) -> None:
            writer.write(c, stamp, m.store.serialize_cdr(msg, msg.__msgtype__))

        for i in range(n):
            s = ds[i]
            stamp = int(stamps[i])
            if i == 0:
                T_lidar_cam = np.linalg.inv(s.calib.T_cam_lidar)  # pose of the camera in the LiDAR frame
                put(tf_static, m.tf(T_lidar_cam, stamp, LIDAR_FRAME, CAMERA_FRAME), stamp)
            if s.pose is not None:
                put(tf, m.tf(s.pose, stamp, WORLD_FRAME, LIDAR_FRAME), stamp)
            put(conn["camera_info"], m.camera_info(s.calib.P, s.image.shape[:2], stamp, CAMERA_FRAME), stamp)
            put(conn["image"], m.image(s.image, stamp, CAMERA_FRAME), stamp)
            put(conn["points"], m.cloud(s.points, stamp, LIDAR_FRAME), stamp)
    return n


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occle-kitti2bag``."""
    p = argparse.ArgumentParser(prog="occle-kitti2bag", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset root holding sequences/ (SemanticKITTI layout)")
    p.add_argument("--sequence", required=True, help="sequence id, e.g. 08")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--frames", type=int, default=None, help="write only the first N frames")
    p.add_argument("--rate", type=float, default=None, help="frame rate in Hz (default: times.txt, else 10)")
    p.add_argument("--start-stamp", type=float, default=1_700_000_000.0, help="stamp of time 0, seconds")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    for key, default in DEFAULT_TOPICS.items():
        p.add_argument(f"--{key.replace('_', '-')}-topic", default=default, help=f"topic of the {key} messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-kitti2bag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.rate is not None and not args.rate > 0:
        print(f"occle-kitti2bag: error: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    topics = {"image": args.image_topic, "camera_info": args.camera_info_topic, "points": args.points_topic}
    try:
        n = write_bag(
            args.data, args.sequence, args.out, args.frames, args.rate, args.start_stamp, topics, args.storage
        )
    except (OSError, ValueError) as exc:
        print(f"occle-kitti2bag: error: {exc}", file=sys.stderr)
        return 1
    print(f"occle-kitti2bag: wrote {n} frames to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
