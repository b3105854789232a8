"""``occle-kitti2bag``: write a bag from KITTI data.

``--format ros2`` (default): a ROS 2 bag (mcap) from a SemanticKITTI / KITTI-odometry-layout sequence
(``--data ROOT --sequence 08``). ``--format ros1-kitti2bag``: a KITTI raw drive (``--raw ROOT --drive
2011_09_26_drive_0001_sync``) as the ROS 1 bag of the widely used ``kitti2bag`` tool (:mod:`occle_ros.kitti_raw_bag`).

Topics of the ROS 2 format (names are options, the defaults follow the ROS 1 ``kitti2bag`` tool):

- ``/kitti/camera_color_left/image_raw``   sensor_msgs/Image rgb8 (``image_2``)
- ``/kitti/camera_color_left/camera_info`` sensor_msgs/CameraInfo (P = P2 of ``calib.txt``, no distortion)
- ``/kitti/velo/pointcloud``               sensor_msgs/PointCloud2 x, y, z, intensity float32
- ``/tf_static``                           tf2_msgs/TFMessage: ``velo_link`` -> ``camera_color_left`` (once)
- ``/tf``                                  tf2_msgs/TFMessage: ``world`` -> ``velo_link`` per frame (poses.txt)

Stamps are ``--start-stamp`` plus ``times.txt`` (or ``frame / --rate`` when there is no times.txt or ``--rate``
is given). Bags are written with rosbags (:mod:`occle_ros.bag_writer`; no ROS installation needed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from occle_ros.bag_writer import BagWriter

DEFAULT_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
}
LIDAR_FRAME = "velo_link"
CAMERA_FRAME = "camera_color_left"
WORLD_FRAME = "world"
XYZI = ("x", "y", "z", "intensity")
FORMATS = ("ros2", "ros1-kitti2bag")


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
    with BagWriter(out, storage=storage) as bag:
        for i in range(n):
            s = ds[i]
            stamp = int(stamps[i])
            if i == 0:
                T_lidar_cam = np.linalg.inv(s.calib.T_cam_lidar)  # pose of the camera in the LiDAR frame
                bag.write("/tf_static", bag.tf([(LIDAR_FRAME, CAMERA_FRAME, T_lidar_cam)], stamp), stamp)
            if s.pose is not None:
                bag.write("/tf", bag.tf([(WORLD_FRAME, LIDAR_FRAME, s.pose)], stamp), stamp)
            P = s.calib.P
            info = bag.camera_info(P[:, :3], P, s.image.shape[:2], stamp, CAMERA_FRAME)
            bag.write(topics["camera_info"], info, stamp)
            bag.write(topics["image"], bag.image(s.image, "rgb8", stamp, CAMERA_FRAME), stamp)
            bag.write(topics["points"], bag.pointcloud(s.points[:, :4], XYZI, stamp, LIDAR_FRAME), stamp)
    return n


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occle-kitti2bag``."""
    p = argparse.ArgumentParser(prog="occle-kitti2bag", description=__doc__.split("\n\n")[0].strip('"` '))
    p.add_argument("--format", choices=FORMATS, default="ros2", help="ros2 (default) or ros1-kitti2bag")
    p.add_argument("--data", help="ros2: dataset root holding sequences/ (SemanticKITTI layout)")
    p.add_argument("--sequence", help="ros2: sequence id, e.g. 08")
    p.add_argument("--raw", help="ros1-kitti2bag: KITTI raw root holding the date folders")
    p.add_argument("--drive", help="ros1-kitti2bag: drive, e.g. 2011_09_26_drive_0001_sync")
    p.add_argument("--out", required=True, help="output: ros2 bag folder / ros1 .bag file (must not exist)")
    p.add_argument("--frames", type=int, default=None, help="write only the first N frames")
    p.add_argument("--rate", type=float, default=None, help="ros2: frame rate in Hz (default: times.txt, else 10)")
    p.add_argument("--start-stamp", type=float, default=1_700_000_000.0, help="ros2: stamp of time 0, seconds")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="ros2 storage")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for key, default in DEFAULT_TOPICS.items():
        p.add_argument(f"--{key.replace('_', '-')}-topic", default=default, help=f"ros2: topic of the {key} messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-kitti2bag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    needed = ("data", "sequence") if args.format == "ros2" else ("raw", "drive")
    missing = [f"--{n}" for n in needed if not getattr(args, n)]
    if missing:
        print(f"occle-kitti2bag: error: --format {args.format} needs {' and '.join(missing)}", file=sys.stderr)
        return 2
    if args.rate is not None and not args.rate > 0:
        print(f"occle-kitti2bag: error: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    topics = {"image": args.image_topic, "camera_info": args.camera_info_topic, "points": args.points_topic}
    try:
        if args.format == "ros2":
            n = write_bag(
                args.data, args.sequence, args.out, args.frames, args.rate, args.start_stamp, topics, args.storage
            )
        else:
            from occle_ros.kitti_raw_bag import write_raw_bag

            n = write_raw_bag(args.raw, args.drive, args.out, args.frames, progress=not args.quiet)
    except (OSError, ValueError) as exc:
        print(f"occle-kitti2bag: error: {exc}", file=sys.stderr)
        return 1
    print(f"occle-kitti2bag: wrote {n} frames to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
