"""``occle-synth``: write procedural driving scenes in the SemanticKITTI layout, or seen by a nuScenes surround rig
in the nuScenes v1.0 layout with Occ3D-nuScenes beside it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from occle_core.labels import class_table
from occle_core.synth.appearance import APPEARANCES
from occle_core.synth.pseudo_noise import NOISE_LEVELS
from occle_core.synth.sensors import INTENSITY_SCALES, LIDAR_HEIGHT, LidarModel, beam_elevations
from occle_core.synth.sequence import SyntheticSequence
from occle_core.synth.writer import write_pseudo_folder, write_sequence

LAYOUTS = ("semantic_kitti", "nuscenes")
#: LiDAR defaults per layout: KITTI's HDL-64E 1.73 m up; nuScenes' LIDAR_TOP (HDL-32E) 1.84 m up
RIG_DEFAULTS = {
    "semantic_kitti": {"beams": 64, "lidar_height": LIDAR_HEIGHT, "intensity": "reflectance", "azimuth_steps": 2000},
    "nuscenes": {"beams": 32, "lidar_height": 1.84023, "intensity": "nuscenes", "azimuth_steps": 1084},
}


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-synth [--layout semantic_kitti|nuscenes] --out DIR --seed S --frames N [--scenes N] [--sequence 00]
    [--image-scale 1.0] [rig, appearance and ground-truth options] [--pseudo-noise LEVEL [--pseudo-only
    [--pseudo-dir NAME]]] [--quiet]``."""
    p = argparse.ArgumentParser(
        prog="occle-synth",
        description="Write procedural driving scenes in the SemanticKITTI layout (one camera) or in the nuScenes "
        "v1.0 layout with Occ3D-nuScenes (six cameras, ego-frame grid).",
    )
    p.add_argument("--layout", default="semantic_kitti", choices=LAYOUTS, help="layout (default semantic_kitti)")
    p.add_argument("--out", required=True, help="dataset root; SemanticKITTI: OUT/sequences/SS/")
    p.add_argument("--seed", type=int, default=0, help="scene and noise seed (nuscenes: scene i gets S + i; default 0)")
    p.add_argument("--frames", type=int, default=10, help="frames (nuscenes: 2 Hz key frames per scene; default 10)")
    p.add_argument("--scenes", type=int, default=1, help="nuscenes: number of scenes (default 1)")
    p.add_argument("--sequence", default="00", help="semantic_kitti: sequence id (default 00)")
    p.add_argument(
        "--image-scale", type=float, default=1.0, help="image size relative to 376x1241 / nuscenes 900x1600 (default 1)"
    )
    p.add_argument("--voxel-every", type=int, default=1, help="write voxel labels every N frames (default 1)")
    p.add_argument("--window", type=int, default=5, help="scans whose rays decide the invalid voxels (default 5)")
    p.add_argument("--window-stride", type=int, default=2, help="frames between accumulated scans (default 2)")
    p.add_argument("--azimuth-steps", type=int, help="LiDAR columns per turn (default 2000; nuscenes 1084)")
    p.add_argument(
        "--accumulate",
        type=int,
        help="scans, --window-stride apart, whose points vote the voxel labels (default: --window; nuscenes 10)",
    )
    rig = p.add_argument_group("LiDAR rig (defaults: KITTI's HDL-64E; nuscenes: LIDAR_TOP, HDL-32E)")
    rig.add_argument("--beams", type=int, choices=(32, 64, 128), help="beam pattern (default 64; nuscenes 32)")
    rig.add_argument("--lidar-height", type=float, help="metres above the road (default 1.73; nuscenes 1.84)")
    rig.add_argument("--lidar-pitch", type=float, default=0.0, help="mounting pitch, deg, + = nose down (default 0)")
    rig.add_argument(
        "--intensity", choices=INTENSITY_SCALES, help="intensity scale (default reflectance; nuscenes nuscenes)"
    )
    rig.add_argument("--dropout", type=float, default=0.02, help="base rate of lost returns (default 0.02)")
    rig.add_argument("--range-noise", type=float, default=0.02, help="range noise sigma, metres (default 0.02)")
    rig.add_argument("--fov-only", action="store_true", help="publish only points that project into image_2")
    p.add_argument(
        "--appearance", default="flat", choices=APPEARANCES, help="image look: flat class colours or realistic"
    )
    pn = p.add_argument_group("2D pseudo labels")
    pn.add_argument(
        "--pseudo-noise",
        default="default",
        choices=NOISE_LEVELS,
        help="oracle (the true 2D labels), default (the segmenter noise model) or x2 (every noise component "
        "doubled); default: default",
    )
    pn.add_argument(
        "--pseudo-only",
        action="store_true",
        help="write only the pseudo labels, into --pseudo-dir of a sequence already written with the same "
        "seed, frames and image scale",
    )
    pn.add_argument("--pseudo-dir", help="folder of --pseudo-only labels (default: pseudo_2d_<pseudo-noise>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--preview", metavar="PNG", help="also render frame 0 (image, pseudo labels, voxels) to PNG")
    args = p.parse_args(argv)
    for key, value in RIG_DEFAULTS[args.layout].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.scenes < 1:
        p.error(f"--scenes must be >= 1, got {args.scenes}")
    if args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    if not args.image_scale > 0 or args.image_scale > 4:
        p.error(f"--image-scale must be in (0, 4], got {args.image_scale}")
    if args.voxel_every < 1:
        p.error(f"--voxel-every must be >= 1, got {args.voxel_every}")
    if args.window < 1:
        p.error(f"--window must be >= 1, got {args.window}")
    if args.window_stride < 1:
        p.error(f"--window-stride must be >= 1, got {args.window_stride}")
    if args.accumulate is not None and args.accumulate < 1:
        p.error(f"--accumulate must be >= 1, got {args.accumulate}")
    if args.pseudo_dir and not args.pseudo_only:
        p.error("--pseudo-dir needs --pseudo-only (a full run writes pseudo_2d/)")
    if not (args.sequence.isdigit() and len(args.sequence) <= 2):
        p.error(f"--sequence must be a 1-2 digit id like 00, got {args.sequence!r}")
    try:
        lidar = LidarModel(
            azimuth_steps=args.azimuth_steps,
            elevations=beam_elevations(args.beams),
            height=args.lidar_height,
            pitch=args.lidar_pitch,
            intensity=args.intensity,
            dropout=args.dropout,
            range_noise=args.range_noise,
        )
    except ValueError as exc:
        p.error(str(exc))
    if args.layout == "nuscenes":
        if args.fov_only or args.preview or args.voxel_every != 1 or args.pseudo_only:
            p.error("--fov-only, --preview, --voxel-every and --pseudo-only apply to --layout semantic_kitti only")
        from occle_core.synth.surround import write_surround

        kw = {"window": args.window, "stride": args.window_stride, "appearance": args.appearance}
        kw["pseudo_noise"] = args.pseudo_noise
        if args.accumulate is not None:
            kw["accumulate"] = args.accumulate
        write_surround(args.out, args.scenes, args.frames, args.seed, not args.quiet, image_scale=args.image_scale,
                       lidar=lidar, **kw)  # fmt: skip
        if not args.quiet:
            print(f"wrote {args.scenes} scenes x {args.frames} key frames to {args.out} (nuScenes, Occ3D)")
        return 0
    seq = SyntheticSequence(
        args.seed,
        args.frames,
        image_scale=args.image_scale,
        lidar=lidar,
        window=args.window,
        stride=args.window_stride,
        accumulate=args.accumulate,
        fov_only=args.fov_only,
        appearance=args.appearance,
    )
    if args.pseudo_only:
        folder = args.pseudo_dir or f"pseudo_2d_{args.pseudo_noise}"
        try:
            out = write_pseudo_folder(args.out, seq, args.sequence, args.pseudo_noise, folder, not args.quiet)
        except (FileNotFoundError, ValueError) as exc:
            p.error(str(exc))
        if not args.quiet:
            print(f"wrote {args.frames} pseudo-label maps ({args.pseudo_noise}) to {out}")
        return 0
    seq_dir = write_sequence(
        args.out,
        seq,
        args.sequence,
        voxel_every=args.voxel_every,
        progress=not args.quiet,
        pseudo_noise=args.pseudo_noise,
    )
    if not args.quiet:
        print(f"wrote {args.frames} frames to {seq_dir}")
    if args.preview:
        from occle_core.data.semantic_kitti import SemanticKittiDataset
        from occle_core.render import render_sample_overview

        sample = SemanticKittiDataset(args.out, [args.sequence])[0]
        render_sample_overview(
            sample.image, sample.voxel_labels, class_table("semantic_kitti"), sample.pseudo2d, args.preview
        )
    return 0
