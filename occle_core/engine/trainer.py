"""The OccLE trainer: AMP, DDP, atomic checkpoints, exact resume, logs and evaluation during training.

One code path runs a single process and any number of processes under ``torchrun``: when ``WORLD_SIZE`` is set
the trainer joins an ``env://`` process group (:mod:`occle_core.engine.distributed`), wraps the model in DDP and
shards every epoch with a ``DistributedSampler`` (``set_epoch`` per epoch).

Exact resume: a checkpoint holds the config, class table, grid, weights, optimiser, schedule, GradScaler,
EMA teacher, class weights, step and the RNG states of every rank. The data order is a pure function of
``(train.seed, epoch)`` (``DistributedSampler``), the position inside an epoch follows from the step, and each
frame is read under an RNG seeded by ``(train.seed, epoch, index)`` (:mod:`occle_core.engine.reproducibility`);
so a resumed run replays the same batches and, on deterministic kernels (CPU), the same loss curve as an
uninterrupted run.

Outputs in the run folder: ``checkpoint.pt`` (resumable, replaced atomically every ``train.ckpt_every`` steps
and at the end), ``model.pt`` (weights + config, for ``occle-eval`` and the predictor), ``train_log.jsonl``
(one line per step: losses, lr, grad norm, timings), ``eval_log.jsonl``, ``config.yaml`` and TensorBoard
events under ``tb/`` (scalars per log step, IoU / mIoU and an occupancy image per evaluation).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from occle_core.checkpoint import check_compatible, load_checkpoint, make_checkpoint, save_checkpoint
from occle_core.config import RESUMABLE_CHANGES, OccleConfig
from occle_core.data.batch import collate
from occle_core.data.factory import TrainFrames, build_dataset
from occle_core.engine.distributed import barrier, setup_distributed
from occle_core.engine.reproducibility import isolated_rng, rng_state, seed_everything, seed_of, set_rng_state
from occle_core.engine.schedule import build_scheduler
from occle_core.evaluate import evaluate_model, scores_to_json
from occle_core.ground import GROUND_CLASSES, class_ids
from occle_core.losses import class_weights_from_counts, compute_losses, label_counts
from occle_core.model.occle import OccLE

CHECKPOINT_NAME = "checkpoint.pt"
MAX_SKIPPED_STEPS = 50  # consecutive non-finite steps before training gives up
MODEL_NAME = "model.pt"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"


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
        train_set: the training frames (Samples, voxel labels optional: label-free adaptation); None builds the
            labelled ``train`` split of ``cfg.data`` under the label budget.
        step_hooks: called as ``hook(trainer, values)`` on every rank after each step (after its log line,
            before its checkpoint); an exception from a hook ends :meth:`fit` without a checkpoint of that step.
        class_weights: (K,) voxel CE class weights to use (e.g. those of the checkpoint being fine-tuned) instead
            of counting them on the training frames; a resumed run keeps its own.

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
        train_set: Dataset | None = None,
        step_hooks: Sequence[Callable[[Trainer, dict[str, float]], None]] = (),
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.out_dir = Path(out_dir if out_dir is not None else cfg.train.out_dir)
        cfg = replace(cfg, train=replace(cfg.train, out_dir=str(self.out_dir)))
        self.rank, self.world, self.device = setup_distributed(device)
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        ckpt: dict | None = None
        if resume and ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")
            saved = OccleConfig.from_saved(ckpt["config"])
            changed = saved.resume_changes(cfg)
            if changed:
                raise ValueError(
                    f"cannot resume {ckpt_path} with a different config: {', '.join(changed)} "
                    f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change; start a new run instead)"
                )
            check_compatible(ckpt, cfg.data.classes(), cfg.data.voxel_grid())
        elif not resume and ckpt_path.is_file():
            raise ValueError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
        cfg.validate()
        self.cfg = cfg
        self.classes = cfg.data.classes()
        self.ground_ids = torch.from_numpy(class_ids(self.classes, GROUND_CLASSES[self.classes.name]))
        self.grid = cfg.data.voxel_grid()
        self.progress = progress and self.rank == 0
        self.tensorboard = tensorboard
        self.is_cuda = self.device.type == "cuda"

        seed_everything(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
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
            self.model.optimizer_groups(cfg.train.lr), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.step_hooks = list(step_hooks)
        self.train_set = train_set
        if train_set is None:
            self.train_set = TrainFrames.of(build_dataset(cfg, "train"), cfg.data, cfg.train.seed)
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
            self.class_weights = class_weights if class_weights is not None else self._class_weights()
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
        """Class weights from the labelled voxels of up to ``train.class_weight_frames`` evenly spaced frames (frames
        without voxel labels, e.g. a label-free adaptation's, are passed over).

        Raises:
            ValueError: none of those frames has voxel labels.
        """
        n = len(self.train_set)
        count = min(n, max(1, self.cfg.train.class_weight_frames))
        idx = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
        k = self.classes.num_classes
        counts = torch.zeros(k, dtype=torch.int64)
        labelled = 0
        for i in idx.tolist():
            s = self.train_set[i]
            if s.voxel_labels is None:
                continue
            labelled += 1
            lab = torch.from_numpy(np.asarray(s.voxel_labels, np.int64))
            if s.invalid is not None:
                lab[torch.from_numpy(np.asarray(s.invalid, bool))] = self.classes.ignore_index
            counts += label_counts(lab, torch.from_numpy(s.label_mask), k)
        if not labelled:
            raise ValueError(f"loss.class_weighted needs voxel labels: none of {len(idx)} training frames has any")
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
        barrier()

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
                collate_fn=functools.partial(collate, cfg=self.cfg),
                num_workers=self.cfg.train.num_workers,
                drop_last=True,
                generator=torch.Generator().manual_seed(seed_of(self.cfg.train.seed, epoch)),
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
            out, batch, self.cfg.loss, cw, self.classes.empty_index, teacher_logits, self.ground_ids
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
        barrier()
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
                for hook in self.step_hooks:
                    hook(self, last)
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
    return threading.current_thread() is threading.main_thread()
