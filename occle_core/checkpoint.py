"""Checkpoints: one file holding config, class table, grid, grid frame, camera set and weights, and the one
checkpoint -> model builder.

The grid frame (``"lidar"`` | ``"ego"``) and the camera set (channel names, front camera first) say what the
network expects at inference: points and every ``T_cam<-grid`` in that frame, one image per named camera.
Checkpoints written before these entries existed load as ``("lidar", ["image_2"])`` (the single-camera network).

Written atomically (temporary file in the same folder, fsync, ``os.replace``) so a crash mid-write leaves
the previous checkpoint intact; read with ``torch.load(..., weights_only=True)`` so a file that would run
code when unpickled is refused.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable

if TYPE_CHECKING:
    from occle_core.config import OccleConfig
    from occle_core.model.occle import OccLE

FORMAT = "occle-checkpoint"
VERSION = 1
LEGACY_RIG = ("lidar", ("image_2",))  # grid frame and cameras of checkpoints that do not record them


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, unsafe or does not fit the requested model."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then atomically replace ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_rig(grid_frame: Any, cameras: Any, where: str) -> tuple[str, list[str]]:
    """``(grid_frame, cameras)`` checked: a known frame and a non-empty list of distinct names."""
    from occle_core.data.sample import GRID_FRAMES

    if grid_frame not in GRID_FRAMES:
        raise CheckpointError(f"{where} grid_frame must be one of {list(GRID_FRAMES)}, got {grid_frame!r}")
    names = list(cameras) if isinstance(cameras, list | tuple) else []
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CheckpointError(f"{where} cameras must be a non-empty list of distinct camera names, got {cameras!r}")
    return grid_frame, names


def make_checkpoint(
    config: dict,
    classes: ClassTable,
    grid: VoxelGrid,
    model_state: dict[str, torch.Tensor],
    grid_frame: str | None = None,
    cameras: list[str] | None = None,
    **extra: Any,
) -> dict:
    """Assemble the checkpoint dict (extra keys: optimizer, scheduler, step, rng, metrics...).

    Args:
        grid_frame / cameras: the grid frame and the camera set; None takes them from ``config["data"]``
            (:meth:`~occle_core.config.DataConfig.frame` / :meth:`~occle_core.config.DataConfig.camera_names`).
    """
    from occle_core.config import DataConfig

    data = config.get("data") or {}
    rig = DataConfig(
        dataset=data.get("dataset", "semantic_kitti"),
        cameras=data.get("cameras"),
        grid_frame=data.get("grid_frame"),
        past_images=data.get("past_images", 0),  # past views join the camera set
    )
    frame, names = _check_rig(
        rig.frame() if grid_frame is None else grid_frame,
        rig.camera_names() if cameras is None else cameras,
        "make_checkpoint:",
    )
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "classes": {"dataset": classes.name, "names": list(classes.names), "empty_index": classes.empty_index},
        "grid": grid.to_dict(),
        "grid_frame": frame,
        "cameras": names,
        "model": model_state,
        **extra,
    }


def checkpoint_rig(ckpt: dict) -> tuple[str, list[str]]:
    """``(grid_frame, camera names)`` a checkpoint was trained for; ``("lidar", ["image_2"])`` when it predates
    these entries.

    Raises:
        CheckpointError: an unknown frame or a malformed camera list.
    """
    frame = ckpt.get("grid_frame", LEGACY_RIG[0])
    cameras = ckpt.get("cameras", list(LEGACY_RIG[1]))
    return _check_rig(frame, cameras, "checkpoint")


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` (from :func:`make_checkpoint`) atomically."""
    if checkpoint.get("format") != FORMAT:
        raise CheckpointError("save_checkpoint expects a dict built by make_checkpoint")
    atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check an occle checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, a pickle that needs code to load, or not an occle checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} refused: it holds objects other than weights and plain data "
            f"(weights_only=True): {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch file: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an occle checkpoint (no format={FORMAT!r} entry)")
    for key in ("config", "classes", "grid", "model"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks the {key!r} entry")
    return ckpt


def check_compatible(ckpt: dict, classes: ClassTable | None = None, grid: VoxelGrid | None = None) -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` was trained for other classes or another grid."""
    if classes is not None:
        names = list(ckpt["classes"]["names"])
        if names != list(classes.names):
            raise CheckpointError(
                f"checkpoint has {len(names)} classes of {ckpt['classes']['dataset']!r}, "
                f"expected {classes.num_classes} classes of {classes.name!r}"
            )
    if grid is not None:
        have = VoxelGrid.from_dict(ckpt["grid"])
        if have != grid:
            raise CheckpointError(
                f"checkpoint grid {have.to_dict()} does not match the requested grid {grid.to_dict()}"
            )


def build_model(ckpt: dict, expect: OccleConfig | None = None) -> tuple[OccLE, OccleConfig]:
    """Build the :class:`~occle_core.model.occle.OccLE` of a loaded checkpoint's config and load its weights.

    The pretrained-backbone path of the stored config is cleared (the weights come from the checkpoint); the
    grid, the grid frame and the camera set (:func:`checkpoint_rig`) are stored in the returned config (no
    YAML lookup per frame; batches built from it take the checkpoint's cameras).

    Args:
        ckpt: what :func:`load_checkpoint` returned.
        expect: when given, the checkpoint must be for its class table and grid.

    Raises:
        CheckpointError: the config, classes, grid or weights do not fit the network (or ``expect``).
    """
    from occle_core.config import OccleConfig
    from occle_core.model.occle import OccLE

    try:
        cfg = OccleConfig.from_saved(ckpt["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint config is not a valid occle config: {exc}") from exc
    cfg.model.pretrained_image = ""
    grid = cfg.data.voxel_grid()
    cfg.data.grid = grid.to_dict()
    cfg.data.grid_frame, cfg.data.cameras = checkpoint_rig(ckpt)
    check_compatible(ckpt, cfg.data.classes(), grid)  # the file agrees with itself
    if expect is not None:
        check_compatible(ckpt, expect.data.classes(), expect.data.voxel_grid())
    model = OccLE(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise CheckpointError(f"checkpoint weights do not fit the network of its config: {details[0]}{more}") from exc
    return model, cfg


def load_model(
    path: str | Path, device: torch.device | str = "cpu", expect: OccleConfig | None = None
) -> tuple[OccLE, OccleConfig, dict]:
    """:func:`load_checkpoint` (``weights_only=True``) then :func:`build_model`; the model is in eval mode on
    ``device``. Returns (model, config, checkpoint dict)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    model, cfg = build_model(ckpt, expect)
    return model.to(device).eval(), cfg, ckpt
