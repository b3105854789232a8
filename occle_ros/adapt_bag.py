"""``occle-adapt-bag``: ``occle-adapt`` on a user's own recording (a ROS 1 or ROS 2 bag, no dataset layout).

    occle-adapt-bag --bag BAG [--preset kitti|nuscenes] [--slop S] --checkpoint C --segmenter deeplab-cityscapes
        --segmenter-model deeplab.tflite --out DIR [--steps N] [--hold-out 000003 ...] [--resume]

The frames are :class:`~occle_ros.bag_frames.BagFrames` of the preset's topics (picked from the bag's topics when
not given; the preset's cameras put in the checkpoint's camera order), in the checkpoint's grid frame; frame ids are
the LiDAR messages' indices in the bag (``000000``...), which ``--hold-out`` names. Everything else (pseudo-label
cache, guard, checkpoints, resume, before / after consistency) is :mod:`occle_core.adapt`'s, unchanged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from occle_core.adapt import add_adapt_arguments, run_command
from occle_ros.bag_frames import BagFrames


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``occle-adapt-bag``: the bag's, then ``occle-adapt``'s (less ``--dataset / --data``)."""
    from occle_ros.launcher import DATASETS

    p = argparse.ArgumentParser(prog="occle-adapt-bag", description=__doc__.split("\n\n")[0])
    # dest "data": the adapted checkpoint's data.root records the bag
    p.add_argument("--bag", dest="data", metavar="BAG", required=True, help="ROS 1 .bag file or ROS 2 bag folder")
    p.add_argument("--preset", choices=DATASETS, help="topics and frames of the bag (default: the one that fits)")
    p.add_argument("--slop", type=float, help="seconds between a LiDAR message and each camera's image (default: the "
                   "preset's sync.slop)")  # fmt: skip
    p.add_argument("--intensity-scale", type=float, help="multiplier of the clouds' intensity (default: the preset's "
                   "intensity_scale; the readers' range is 0..1: 0.00392 for nuScenes' 0..255)")  # fmt: skip
    return add_adapt_arguments(p)


def bag_frames(args: argparse.Namespace) -> BagFrames:
    """The frames of ``args.data`` (the bag) for the checkpoint ``args.checkpoint`` (its grid frame and cameras)."""
    from occle_core.checkpoint import load_checkpoint
    from occle_core.config import OccleConfig
    from occle_ros.bag_player import bag_path
    from occle_ros.demo_bag import bag_topics, detect_preset, load_preset
    from occle_ros.params import match_cameras

    if args.slop is not None and args.slop <= 0:
        raise ValueError(f"--slop must be > 0 seconds, got {args.slop}")
    data = OccleConfig.from_dict(load_checkpoint(args.checkpoint)["config"]).data
    bag = bag_path(Path(args.data))
    preset = load_preset(args.preset or detect_preset(bag_topics(bag)))
    cameras = match_cameras(preset.cameras, data.camera_names())
    return BagFrames(bag, preset, cameras, data.frame(), args.slop, args.intensity_scale)


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-adapt-bag``: 0 done, 3 stopped by the guard (last good checkpoint kept), 2 bad input (one line)."""
    from occle_ros.bag_player import BagError
    from occle_ros.params import StartupError

    args = build_parser().parse_args(argv)
    return run_command(args, lambda: bag_frames(args), "occle-adapt-bag", (BagError, StartupError))


if __name__ == "__main__":
    sys.exit(main())
