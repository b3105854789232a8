"""Label-efficient OccLE training: AMP, torch.distributed, atomic checkpoints and exact resume.

One code path runs a single process (``occle-train ...``) and any number of processes under ``torchrun``
(``torchrun --nproc-per-node 8 -m occle_core.train ...`` or ``torchrun ... $(which occle-train) ...``): when
``WORLD_SIZE`` is set the trainer joins an ``env://`` process group (NCCL on CUDA, gloo on CPU), wraps the
model in DDP and shards every epoch with a ``DistributedSampler`` (``set_epoch`` per epoch).

Exact resume: a checkpoint holds the config, class table, grid, weights, optimiser, schedule, GradScaler,
EMA teacher, class weights, step and the RNG states of every rank. The data order is a pure function of
``(train.seed, epoch)`` (``DistributedSampler``), the position inside an epoch follows from the step, and each
frame is read under an RNG seeded by ``(train.seed, epoch, index)``; so ``--resume`` replays the same batches
and, on deterministic kernels (CPU), the same loss curve as an uninterrupted run.

Outputs in ``train.out_dir``: ``checkpoint.pt`` (resumable, replaced atomically every ``train.ckpt_every``
steps and at the end), ``model.pt`` (weights + config, for ``occle-eval`` and the predictor), ``train_log.jsonl``
(one line per step: losses, lr, grad norm, timings), ``eval_log.jsonl``, ``config.yaml`` and TensorBoard
events under ``tb/`` (scalars per log step, IoU / mIoU and an occupancy image per evaluation).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from occle_core.checkpoint import CheckpointError, check_compatible, load_checkpoint, make_checkpoint, save_checkpoint
from occle_core.config import OccleConfig, load_config
from occle_core.data.label_budget import select_budget
from occle_core.data.sample import Sample
from occle_core.geometry import VoxelGrid
from occle_core.losses import class_weights_from_counts, compute_losses, label_counts

CHECKPOINT_NAME = "checkpoint.pt"
MAX_SKIPPED_STEPS = 50  # consecutive non-finite steps before training gives up
MODEL_NAME = "model.pt"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"


# --------------------------------------------------------------------------------------------- data


def standard_grid(dataset: str) -> VoxelGrid:
    """The dataset's full-resolution label grid (from ``config/<dataset>.yaml``)."""
    from occle_core.config import DataConfig

    return DataConfig(dataset=dataset).voxel_grid()


def grid_scale(cfg: OccleConfig) -> int:
    """Integer pooling factor from the dataset's standard grid to ``cfg.data.grid``.

    Raises:
        ValueError: the configured grid is not the standard grid pooled by an integer factor.
    """
    std = standard_grid(cfg.data.dataset)
    want = cfg.data.voxel_grid()
    factor = want.voxel_size / std.voxel_size
    scale = int(round(factor))
    if scale < 1 or abs(factor - scale) > 1e-6 or any(s % scale for s in std.shape) or std.scaled(scale) != want:
        raise ValueError(
            f"data.grid {want.to_dict()} must be the {cfg.data.dataset} grid {std.to_dict()} pooled by an integer "
            f"factor (same origin and extent, voxel_size a multiple of {std.voxel_size})"
        )
    return scale


def _occ3d_tokens(root: Path, entries: Sequence[str]) -> list[str]:
    """Occ3D split entries: split files under ``root`` (one token per line) or scene-name prefixes."""
    from occle_core.data.occ3d import discover_tokens, read_split_file

    tokens: list[str] = []
    everything: list[str] | None = None
    for e in entries:
        if (root / e).is_file():
            tokens += read_split_file(root / e)
            continue
        everything = discover_tokens(root) if everything is None else everything
        tokens += [t for t in everything if t == e or t.startswith(e.rstrip("/") + "/")]
    return tokens


def build_dataset(cfg: OccleConfig, split: str, with_labels: bool = True) -> Dataset:
    """The reader of ``split`` (``train`` or ``val``) for ``cfg.data`` (its grid pooling applied).

    Raises:
        ValueError: ``data.root`` unset, an unknown split or an empty selection.
        FileNotFoundError: the reader's own error for missing folders.
    """
    if not cfg.data.root:
        raise ValueError("data.root is not set (pass --data ROOT or set data.root in the config)")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    entries = list(cfg.data.train_sequences if split == "train" else cfg.data.val_sequences)
    if cfg.data.dataset == "semantic_kitti":
        from occle_core.data.semantic_kitti import SemanticKittiDataset

        return SemanticKittiDataset(cfg.data.root, entries, grid_scale=grid_scale(cfg), with_labels=with_labels)
    if cfg.data.dataset == "occ3d_nuscenes":
        from occle_core.data.occ3d import Occ3DDataset

        if grid_scale(cfg) != 1:
            raise ValueError("data.grid: the Occ3D reader serves the released 200x200x16 grid only")
        tokens = _occ3d_tokens(Path(cfg.data.root), entries)
        if not tokens:
            raise ValueError(f"data.{split}_sequences {entries} select no Occ3D frame under {cfg.data.root}")
        return Occ3DDataset(cfg.data.root, tokens, grid=cfg.data.voxel_grid(), with_labels=with_labels)
    raise ValueError(f"data.dataset {cfg.data.dataset!r} has no reader")


def _seed_of(*parts: int) -> int:
    """A 32-bit seed mixed from integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block under its own RNG state (python, numpy, torch CPU) and restore the caller's afterwards.

    With ``seed`` the block's randomness is a pure function of it; without, the block merely leaves no trace
    on the caller's streams.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # CPU only: the CUDA streams stay untouched
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class TrainFrames(Dataset):
    """Training view of a reader: the label budget as ``Sample.label_mask`` and per-frame seeded randomness.

    Args:
        base: a dataset of :class:`Sample`.
        ratio / label_seed / budget: the label budget (``data.label_ratio`` / ``label_seed`` / ``label_budget``).
        seed: ``train.seed``; any randomness of the reader for frame ``i`` in epoch ``e`` is seeded by
            ``(seed, e, i)`` so that a resumed run reads the same frames the same way.
    """

    def __init__(self, base: Dataset, ratio: float, label_seed: int, seed: int, budget: str = "voxel") -> None:
        self.base = base
        self.budget = budget
        self.ratio = float(ratio)
        self.label_seed = int(label_seed)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Sample:
        with isolated_rng(_seed_of(self.seed, self.epoch, index)):
            s: Sample = self.base[index]
        if s.voxel_labels is None:
            raise ValueError(f"training frame {s.frame_id} has no voxel labels (voxels/*.label missing?)")
        s.label_mask = select_budget(
            self.budget, s.voxel_labels, self.ratio, self.label_seed, s.frame_id, s.invalid, (index, len(self.base))
        )
        return s


class _Collate:
    """Picklable ``collate_fn`` (DataLoader workers)."""

    def __init__(self, cfg: OccleConfig) -> None:
        self.cfg = cfg

    def __call__(self, samples: list[Sample]):
        from occle_core.data.batch import collate

        return collate(samples, self.cfg)


# ---------------------------------------------------------------------------------- distributed


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the ``env://`` process group when launched by torchrun; pick this rank's device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        (rank, world_size, device).
    """
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this host")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _dist_on():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    rank = dist.get_rank() if _dist_on() else 0
    world = dist.get_world_size() if _dist_on() else 1
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(device) if device.startswith("cuda:") and world == 1 else torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return rank, world, dev


def _barrier() -> None:
    if _dist_on():
        dist.barrier()


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict:
    """This process's RNG states as plain data (``weights_only``-loadable)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, steps: int, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier of ``step`` (0-based) out of ``steps``.

    ``onecycle``: cosine rise from 1/25 to 1 over the warm-up, then cosine decay to 1/25e4 (the one-cycle
    policy with torch's default factors). ``cosine``: linear warm-up from 1/n_warm to 1, cosine decay to 0.
    The warm-up lasts ``round(warmup * steps)`` steps, at least 1 and at most ``steps - 1``.
    """
    n_warm = min(max(1, int(round(warmup * steps))), max(1, steps - 1))
    if schedule == "onecycle":
        lo, end = 1.0 / 25.0, 1.0 / 25.0e4
        if step < n_warm:
            return lo + (1.0 - lo) * 0.5 * (1.0 - math.cos(math.pi * step / n_warm))
        t = min(1.0, (step - n_warm) / max(1, steps - 1 - n_warm))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "cosine":
        if step < n_warm:
            return (step + 1) / n_warm
        t = min(1.0, (step - n_warm) / max(1, steps - n_warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"train.schedule must be 'onecycle' or 'cosine', got {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OccleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_factor` (its state is the step count: checkpoint friendly)."""
    t = cfg.train
    lr_factor(0, int(t.steps), float(t.warmup), t.schedule)  # validates the schedule name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, steps=int(t.steps), warmup=float(t.warmup), schedule=t.schedule)
    )


def validate_train_config(cfg: OccleConfig) -> None:
    """Raise ``ValueError`` naming the first bad ``train`` / ``loss`` / ``data`` value."""
    t = cfg.train
    numeric = {
        "train": ("steps", "batch_size", "lr", "weight_decay", "grad_clip", "ema_decay", "warmup", "seed"),
        "loss": ("voxel_ce", "lovasz", "pseudo_2d", "pseudo_3d", "geometry", "teacher", "projection"),
        "data": ("label_ratio", "label_seed", "max_points"),
    }
    for section, names in numeric.items():
        for name in names:
            v = getattr(getattr(cfg, section), name)
            if isinstance(v, bool) or not isinstance(v, int | float):
                yaml_float = isinstance(v, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", v.strip())
                hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if yaml_float else ""
                raise ValueError(f"{section}.{name} must be a number, got {v!r}{hint}")
    checks = [
        (t.steps >= 1, "train.steps", "an integer >= 1", t.steps),
        (t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size),
        (t.lr > 0, "train.lr", "> 0", t.lr),
        (t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay),
        (t.grad_clip >= 0, "train.grad_clip", ">= 0 (0 = off)", t.grad_clip),
        (t.schedule in ("onecycle", "cosine"), "train.schedule", "'onecycle' or 'cosine'", t.schedule),
        (t.amp_dtype in ("auto", "bf16", "fp16"), "train.amp_dtype", "'auto', 'bf16' or 'fp16'", t.amp_dtype),
        (t.teacher in ("self", "ema"), "train.teacher", "'self' or 'ema'", t.teacher),
        (0 <= t.ema_decay < 1, "train.ema_decay", "in [0, 1)", t.ema_decay),
        (0 <= t.warmup < 1, "train.warmup", "in [0, 1)", t.warmup),
        (t.log_every >= 1, "train.log_every", ">= 1", t.log_every),
        (t.ckpt_every >= 0, "train.ckpt_every", ">= 0 (0 = only at the end)", t.ckpt_every),
        (t.eval_every >= 0, "train.eval_every", ">= 0 (0 = only at the end)", t.eval_every),
        (t.num_workers >= 0, "train.num_workers", ">= 0", t.num_workers),
        (0 <= cfg.data.label_ratio <= 1, "data.label_ratio", "in [0, 1]", cfg.data.label_ratio),
        (0 <= cfg.loss.teacher_threshold <= 1, "loss.teacher_threshold", "in [0, 1]", cfg.loss.teacher_threshold),
    ]
    for name in ("voxel_ce", "lovasz", "pseudo_2d", "pseudo_3d", "geometry", "teacher", "projection"):
        w = getattr(cfg.loss, name)
        checks.append((w >= 0, f"loss.{name}", ">= 0 (0 = off)", w))
    for ok, field_name, expected, got in checks:
        if not ok:
            raise ValueError(f"{field_name} must be {expected}, got {got!r}")


# --------------------------------------------------------------------------------------- trainer

# config fields a resumed run may change: where things live and how often it logs; the rest must match
RESUMABLE_CHANGES = {
    "data.root",
    "train.out_dir",
    "train.num_workers",
    "train.log_every",
    "train.eval_every",
    "train.eval_frames",
    "train.ckpt_every",
}


def config_changes(saved: OccleConfig, new: OccleConfig) -> list[str]:
    """``section.key=old->new`` for every field that differs and may not change on resume."""
    a, b = saved.to_dict(), new.to_dict()
    out = []
    for section, values in a.items():
        for key, old in values.items():
            name = f"{section}.{key}"
            now = b[section][key]
            norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
            if name not in RESUMABLE_CHANGES and norm(old) != norm(now):
                out.append(f"{name}={old!r}->{now!r}")
    return out


class StopRequestedError(Exception):
    """Raised inside the loop when SIGTERM/SIGINT asked for a checkpoint-and-exit."""


class Trainer:
    """Train OccLE on ``cfg`` into ``out_dir``.

    Args:
        cfg: the whole configuration (``cfg.train.out_dir`` is ignored when ``out_dir`` is given).
        out_dir: run folder (checkpoint, logs, TensorBoard).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (else start at step 0).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        progress: tqdm bar on rank 0.
        tensorboard: write TensorBoard events on rank 0.

    Raises:
        ValueError: bad config values (naming the field), an existing checkpoint without ``resume``.
        CheckpointError: the checkpoint to resume is unreadable, unsafe or for other classes / grid.
    """

    def __init__(
        self,
        cfg: OccleConfig,
        out_dir: str | Path | None = None,
        resume: bool = False,
        device: str = "auto",
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir if out_dir is not None else cfg.train.out_dir)
        cfg = replace(cfg, train=replace(cfg.train, out_dir=str(self.out_dir)))
        self.rank, self.world, self.device = setup_distributed(device)
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        ckpt: dict | None = None
        if resume and ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")
            saved = OccleConfig.from_dict(ckpt["config"])
            changed = config_changes(saved, cfg)
            if changed:
                raise ValueError(
                    f"cannot resume {ckpt_path} with a different config: {', '.join(changed)} "
                    f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change; start a new run instead)"
                )
            check_compatible(ckpt, cfg.data.classes(), cfg.data.voxel_grid())
        elif not resume and ckpt_path.is_file():
            raise ValueError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
        validate_train_config(cfg)
        self.cfg = cfg
        self.classes = cfg.data.classes()
        self.grid = cfg.data.voxel_grid()
        self.progress = progress and self.rank == 0
        self.tensorboard = tensorboard
        self.is_cuda = self.device.type == "cuda"

        seed_everything(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        from occle_core.model.occle import OccLE

        self.model: nn.Module = OccLE(cfg).to(self.device)
        self.ddp: nn.Module = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.is_cuda else None
            )
        self.ema: nn.Module | None = None
        if cfg.train.teacher == "ema" and cfg.loss.teacher > 0:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        d = cfg.data
        self.train_set = TrainFrames(
            build_dataset(cfg, "train"), d.label_ratio, d.label_seed, cfg.train.seed, d.label_budget
        )
        self.sampler = DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.train.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // cfg.train.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {len(self.train_set)} frames, fewer than train.batch_size "
                f"({cfg.train.batch_size}) x processes ({self.world})"
            )
        self.val_set = self._val_set()

        self.step = 0
        self.class_weights: torch.Tensor | None = None
        if ckpt is not None:
            self._restore(ckpt)
        elif cfg.loss.class_weighted and cfg.loss.voxel_ce > 0:
            self.class_weights = self._class_weights()
        self.stop_requested = False  # agreed by every rank (all-reduced each step)
        self.signal_received = False  # set by this process's SIGTERM / SIGINT handler
        self.skipped_in_a_row = 0

    # ----------------------------------------------------------------------------------- setup

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.cfg.train.amp and self.is_cuda):
            return None
        if self.cfg.train.amp_dtype == "fp16":
            return torch.float16
        if self.cfg.train.amp_dtype == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _val_set(self) -> Dataset | None:
        if not self.cfg.data.val_sequences:
            return None
        try:
            return build_dataset(self.cfg, "val")
        except (FileNotFoundError, ValueError) as exc:
            self._print(f"note: no evaluation during training ({exc})")
            return None

    def _class_weights(self) -> torch.Tensor:
        """Class weights from the labelled voxels of up to ``train.class_weight_frames`` evenly spaced frames."""
        n = len(self.train_set)
        count = min(n, max(1, self.cfg.train.class_weight_frames))
        idx = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
        k = self.classes.num_classes
        counts = torch.zeros(k, dtype=torch.int64)
        for i in idx.tolist():
            s = self.train_set[i]
            lab = torch.from_numpy(np.asarray(s.voxel_labels, np.int64))
            if s.invalid is not None:
                lab[torch.from_numpy(np.asarray(s.invalid, bool))] = self.classes.ignore_index
            counts += label_counts(lab, torch.from_numpy(s.label_mask), k)
        return class_weights_from_counts(counts)

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.get("teacher") or ckpt["model"])
        self.class_weights = ckpt.get("class_weights")
        self.step = int(ckpt["step"])
        states = ckpt.get("rng") or []
        if len(states) == self.world:
            set_rng_state(states[self.rank])
        elif states:
            self._print(
                f"note: checkpoint saved by {len(states)} process(es), resuming with {self.world}: "
                "the data order is kept, the random streams are not"
            )
            set_rng_state(states[0])
        self._print(f"resumed {self.out_dir / CHECKPOINT_NAME} at step {self.step}")

    def _print(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------------------- state

    def _checkpoint_dict(self, full: bool = True) -> dict:
        extra: dict[str, Any] = {"step": self.step, "class_weights": self.class_weights}
        if full:
            states = [None] * self.world
            if self.world > 1:
                dist.all_gather_object(states, rng_state())
            else:
                states = [rng_state()]
            extra.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                teacher=self.ema.state_dict() if self.ema is not None else None,
                rng=states,
                world_size=self.world,
                epoch=self.step // self.steps_per_epoch,
                batch_in_epoch=self.step % self.steps_per_epoch,
            )
        return make_checkpoint(self.cfg.to_dict(), self.classes, self.grid, self.model.state_dict(), **extra)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks.

        DDP keeps the parameters identical on every rank, but each rank's last forward pass updates its own
        running statistics; averaging them before a checkpoint or an evaluation makes every rank hold the
        exact state that is saved (and a resumed run starts from it on every rank).
        """
        if self.world == 1:
            return
        for buf in self.model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.world)

    def save(self, final: bool = False) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0; every rank adds its RNG state); at the end also ``model.pt``."""
        self.sync_buffers()
        ckpt = self._checkpoint_dict(full=True)  # collective when distributed
        if self.rank == 0:
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, ckpt)
            if final:
                save_checkpoint(self.out_dir / MODEL_NAME, self._checkpoint_dict(full=False))
        _barrier()

    # ------------------------------------------------------------------------------------ loop

    def _batches(self) -> Iterator[Any]:
        """Batches from the current step on: the remainder of this epoch, then whole epochs."""
        bs = self.cfg.train.batch_size
        while True:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            self.train_set.epoch = epoch
            indices = list(self.sampler)[offset * bs : self.steps_per_epoch * bs]
            loader = DataLoader(
                self.train_set,
                batch_size=bs,
                sampler=indices,
                collate_fn=_Collate(self.cfg),
                num_workers=self.cfg.train.num_workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(_seed_of(self.cfg.train.seed, epoch)),
                pin_memory=self.is_cuda,
            )
            yield from loader

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on ``batch``; returns the (rank-averaged) loss terms, lr and grad norm."""
        self.ddp.train()
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.ddp(batch)
            teacher_logits = None
            if self.ema is not None:
                with torch.no_grad():
                    teacher_logits = self.ema(batch).logits
        cw = self.class_weights.to(self.device) if self.class_weights is not None else None
        total, terms = compute_losses(
            out, batch, self.cfg.loss, cw, self.classes.empty_index, teacher_logits=teacher_logits
        )
        # touch every output so DDP sees each parameter used even when a loss term is switched off
        for t in (out.sem2d, out.sem3d, out.geo, out.proj):
            if t is not None and t.requires_grad:
                total = total + 0.0 * t.float().mean()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        skipped = 0.0
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = float(self.scaler.get_scale() < scale)
        elif torch.isfinite(grad_norm):
            self.optimizer.step()
        else:
            skipped = 1.0  # non-finite gradients (all ranks agree: they are all-reduced)
        self.scheduler.step()
        if self.ema is not None and not skipped:
            self._update_ema()
        names = ["loss", *terms]
        vec = torch.stack([total.detach().float(), *[v.float() for v in terms.values()]])
        vec = torch.cat([vec, torch.tensor([float(self.signal_received)], device=vec.device)])
        if self.world > 1:
            dist.all_reduce(vec)
            vec[:-1] /= self.world
        values = vec.tolist()
        self.stop_requested = values[-1] > 0  # any rank signalled: all stop after this step
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
            raise FloatingPointError(
                f"{MAX_SKIPPED_STEPS} optimiser steps in a row had non-finite gradients (step {self.step + 1}, "
                f"loss {values[0]}); lower train.lr or check the data"
            )
        result = dict(zip(names, values[:-1]))
        result.update(lr=lr, grad_norm=float(grad_norm), skipped=skipped)
        return result

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.train.ema_decay
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - d)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    def evaluate(self, writer: Any = None) -> dict | None:
        """Evaluate on the val split (sharded over ranks), log to TensorBoard / ``eval_log.jsonl``."""
        if self.val_set is None:
            return None
        from occle_core.evaluate import evaluate_model, scores_to_json

        self.sync_buffers()
        render_dir = self.out_dir / "eval" / f"step_{self.step:07d}"
        with isolated_rng():
            scores, images = evaluate_model(
                self.model,
                self.val_set,
                self.cfg,
                self.device,
                frames=self.cfg.train.eval_frames,
                amp_dtype=self.amp_dtype,
                render_dir=render_dir if self.rank == 0 else None,
                render_count=1,
                rank=self.rank,
                world=self.world,
            )
        if self.rank == 0:
            summary = scores_to_json(scores, step=self.step)  # strict JSON: NaN -> null
            summary.pop("confusion")
            with open(self.out_dir / EVAL_LOG, "a") as f:
                f.write(json.dumps(summary) + "\n")
            if writer is not None:
                writer.add_scalar("eval/iou", scores["iou"], self.step)
                writer.add_scalar("eval/miou", scores["miou"], self.step)
                for img in images[:1]:
                    writer.add_image("eval/occupancy", img, self.step, dataformats="HWC")
            self._print(f"step {self.step}: IoU {100 * scores['iou']:.2f}  mIoU {100 * scores['miou']:.2f}")
        return scores

    def _open_logs(self) -> Any:
        """Rank 0: clear stale temp files, truncate the logs to the resumed step (a killed run may have logged
        past its checkpoint), write config.yaml; returns the TensorBoard writer (None when disabled)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(f"{CHECKPOINT_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)  # a write interrupted by a kill
        for name in (TRAIN_LOG, EVAL_LOG):
            path = self.out_dir / name
            if path.exists():
                kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
                path.write_text("".join(ln + "\n" for ln in kept))
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if not self.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step + 1 if self.step else None)

    def fit(self) -> dict:
        """Train to ``train.steps``; returns ``{"step", "loss", "s_per_step", "eval", "stopped"}``."""
        cfg = self.cfg.train
        writer = self._open_logs() if self.rank == 0 else None
        _barrier()
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, unit="step")
        old_handlers = self._install_signal_handlers()
        last: dict[str, float] = {}
        times: list[float] = []
        scores = None
        try:
            t_data = time.perf_counter()
            for batch in self._batches():
                if self.step >= cfg.steps:
                    break
                t0 = time.perf_counter()
                last = self.train_step(batch)
                self.step += 1
                t1 = time.perf_counter()
                times.append(t1 - t_data)
                if self.rank == 0:
                    self._log(writer, last, data_s=t0 - t_data, step_s=t1 - t_data)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}", refresh=False)
                end = self.step >= cfg.steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or end:
                    scores = self.evaluate(writer) or scores
                if end:
                    break
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.stop_requested:
                    raise StopRequestedError
                t_data = time.perf_counter()
            self.save(final=True)
            stopped = False
        except StopRequestedError:
            self.save()
            self._print(f"stopped by signal at step {self.step}; checkpoint written, --resume continues")
            stopped = True
        finally:
            bar.close()
            self._restore_signal_handlers(old_handlers)
            if writer is not None:
                writer.close()
        steady = times[2:] if len(times) > 4 else times
        return {
            "step": self.step,
            "loss": last.get("loss", float("nan")),
            "s_per_step": float(np.mean(steady)) if steady else float("nan"),
            "eval": None if scores is None else {"iou": scores["iou"], "miou": scores["miou"]},
            "stopped": stopped,
        }

    def _log(self, writer: Any, values: dict[str, float], data_s: float, step_s: float) -> None:
        rec = {"step": self.step, **values, "data_s": round(data_s, 4), "step_s": round(step_s, 4)}
        with open(self.out_dir / TRAIN_LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None and (self.step % self.cfg.train.log_every == 0 or self.step == 1):
            for k, v in values.items():
                if k != "skipped":
                    writer.add_scalar(("train/" if k not in ("lr", "grad_norm") else "opt/") + k, v, self.step)
            writer.add_scalar("time/s_per_step", step_s, self.step)

    def _install_signal_handlers(self) -> dict:
        """SIGTERM / SIGINT: finish the current step, checkpoint, exit (preemptible clusters)."""
        if not threading_main():
            return {}

        def handler(signum: int, frame: Any) -> None:
            self.signal_received = True

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def threading_main() -> bool:
    """Whether this is the main thread (signal handlers can only be installed there)."""
    import threading

    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------------- CLI


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=1e-3", "data.image_size=[94, 310]"]`` -> ``{"train": {"lr": 0.001}, "data": {...}}``.

    Values are parsed as YAML (numbers, booleans, lists); a malformed item raises ``ValueError`` naming it.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        out.setdefault(section, {})[name] = parsed
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="occle-train",
        description="Train OccLE (label-efficient 3D semantic occupancy). Runs as one process or under torchrun.",
    )
    p.add_argument("--config", help="YAML config (e.g. config/train_synthetic_tiny.yaml); defaults when omitted")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--out", help="run folder (sets train.out_dir)")
    p.add_argument("--steps", type=int, help="optimiser steps (sets train.steps)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: one GPU per rank)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-train``: returns 0 on success, 2 on bad arguments / config / data / checkpoint, 143 when stopped."""
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.data:
            overrides.setdefault("data", {})["root"] = args.data
        if args.out:
            overrides.setdefault("train", {})["out_dir"] = args.out
        if args.steps is not None:
            overrides.setdefault("train", {})["steps"] = args.steps
        cfg = load_config(args.config, overrides)
        ckpt_path = Path(cfg.train.out_dir) / CHECKPOINT_NAME
        if args.resume and args.config is None and ckpt_path.is_file():
            # no --config: continue under the checkpoint's own config (plus the command-line overrides)
            saved = load_checkpoint(ckpt_path)["config"]
            for section, values in overrides.items():
                saved.setdefault(section, {}).update(values)
            cfg = OccleConfig.from_dict(saved)
        trainer = Trainer(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
        summary = trainer.fit()
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as exc:
        print(f"occle-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if _dist_on():
            dist.destroy_process_group()
    if trainer.rank == 0:
        print(json.dumps(summary), flush=True)
    return 143 if summary["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
