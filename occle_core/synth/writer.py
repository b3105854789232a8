"""Writes a synthetic sequence in the SemanticKITTI layout, byte-compatible with the released files (see
:mod:`occle_core.data.semantic_kitti`), plus ``synthetic.json`` (seed, layout and generator settings); and
further 2D pseudo-label folders (another noise level) next to a written sequence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from occle_core.data import semantic_kitti as sk
from occle_core.data.label_png import write_label_png
from occle_core.geometry import write_kitti_calib
from occle_core.synth.sensors import scaled_p0
from occle_core.synth.sequence import SyntheticSequence

FRAME_PERIOD = 0.1  # s, 10 Hz


def _sequence_dir(out: str | Path, sequence: str) -> Path:
    if not (str(sequence).isdigit() and len(str(sequence)) <= 2):
        raise ValueError(f"sequence must be a 1-2 digit id like '00', got {sequence!r}")
    return Path(out) / "sequences" / f"{int(sequence):02d}"


def write_sequence(
    out: str | Path,
    seq: SyntheticSequence,
    sequence: str = "00",
    voxel_every: int = 1,
    progress: bool = True,
    pseudo_noise: str = "default",
) -> Path:
    """Write every frame of ``seq`` into ``out/sequences/<sequence>/`` in the SemanticKITTI layout, the 2D pseudo
    labels (``pseudo_2d/``) at noise level ``pseudo_noise`` (:data:`~occle_core.synth.pseudo_noise.NOISE_LEVELS`).

    Returns:
        The sequence folder.
    """
    from tqdm import tqdm

    if voxel_every < 1:
        raise ValueError(f"voxel_every must be >= 1, got {voxel_every}")
    frames = seq.frames
    seq_dir = _sequence_dir(out, sequence)
    for sub in ("velodyne", "labels", "image_2", "voxels", "pseudo_2d"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    write_kitti_calib(seq_dir / "calib.txt", seq.calib, P0=scaled_p0(seq.calib))
    sk.write_poses(seq_dir / "poses.txt", seq.camera_poses())
    sk.write_times(seq_dir / "times.txt", np.arange(frames) * FRAME_PERIOD)
    for i in tqdm(range(frames), desc="occle-synth", unit="frame", disable=not progress):
        name = f"{i:06d}"
        points, labels = seq.cloud(i)
        sk.write_points(seq_dir / "velodyne" / f"{name}.bin", points)
        sk.write_point_labels(seq_dir / "labels" / f"{name}.label", labels)
        cam = seq.render(i)
        sk.write_image(seq_dir / "image_2" / f"{name}.png", cam.image)
        write_label_png(seq_dir / "pseudo_2d" / f"{name}.png", seq.pseudo_labels(i, cam, pseudo_noise))
        if i % voxel_every == 0:
            vox = seq.voxels(i)
            sk.write_voxel_labels(seq_dir / "voxels" / f"{name}.label", vox["label"])
            for key, suffix in (("bin", ".bin"), ("invalid", ".invalid"), ("occluded", ".occluded")):
                sk.write_voxel_bits(seq_dir / "voxels" / f"{name}{suffix}", vox[key])
        seq.forget_before(i + 1)
    meta = {
        "generator": "occle_core.synth",
        "seed": seq.seed,
        "frames": frames,
        "layout": seq.scene.layout,
        "image_size": list(seq.calib.image_size),
        "azimuth_steps": seq.lidar.azimuth_steps,
        "window": seq.window,
        "window_stride": seq.stride,
        "voxel_every": int(voxel_every),
        "beams": len(seq.lidar.elevations),
        "lidar_height": seq.lidar.height,
        "lidar_pitch": seq.lidar.pitch,
        "intensity": seq.lidar.intensity,
        "dropout": seq.lidar.dropout,
        "range_noise": seq.lidar.range_noise,
        "accumulate": seq.accumulate,
        "fov_only": seq.fov_only,
        "appearance": seq.appearance,
        "primitives": len(seq.scene.prims),
        "pseudo_folders": {"pseudo_2d": pseudo_noise},
    }
    (seq_dir / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return seq_dir


def write_pseudo_folder(
    out: str | Path,
    seq: SyntheticSequence,
    sequence: str = "00",
    noise: str = "default",
    folder: str = "pseudo_2d",
    progress: bool = True,
) -> Path:
    """Write only the 2D pseudo labels of ``seq`` at noise level ``noise`` into ``out/sequences/<sequence>/
    <folder>/``, next to the sequence :func:`write_sequence` wrote from the same seed, frame count and image size
    (checked against its ``synthetic.json``, which then records the folder's level under ``pseudo_folders``).
    Renders the frames again but casts no LiDAR scan and builds no voxel.

    Raises:
        FileNotFoundError: no ``synthetic.json`` there. ValueError: it was written with other settings, or
        ``folder`` is not a plain folder name.
    """
    from tqdm import tqdm

    if not folder or Path(folder).name != folder or folder in ("image_2", "velodyne", "labels", "voxels"):
        raise ValueError(f"folder must be a plain folder name other than the sequence's data folders, got {folder!r}")
    seq_dir = _sequence_dir(out, sequence)
    meta_path = seq_dir / "synthetic.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: write the sequence first (occle-synth without --pseudo-only)")
    meta = json.loads(meta_path.read_text())
    want = {"seed": seq.seed, "frames": seq.frames, "image_size": list(seq.calib.image_size)}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"{meta_path}: {key} is {meta.get(key)!r}, this sequence has {value!r}")
    (seq_dir / folder).mkdir(exist_ok=True)
    for i in tqdm(range(seq.frames), desc="occle-synth pseudo", unit="frame", disable=not progress):
        write_label_png(seq_dir / folder / f"{i:06d}.png", seq.pseudo_labels(i, seq.render(i), noise))
    meta["pseudo_folders"] = {**meta.get("pseudo_folders", {"pseudo_2d": "default"}), folder: noise}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return seq_dir / folder
