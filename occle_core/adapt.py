"""``occle-adapt``: label-free fine-tuning of a checkpoint on a user's own sensor frames (no voxel labels).

    occle-adapt --checkpoint C --dataset kitti_object --data ROOT --segmenter deeplab-cityscapes
        --segmenter-model deeplab.tflite --out DIR [--steps N] [--hold-out ID ...] [--resume]

On a ROS bag instead of a dataset layout: ``occle-adapt-bag`` (:mod:`occle_ros.adapt_bag`), the same run on the
bag's frames (:func:`run_command` with a reader of :class:`Sample`).

Supervision, all of it from the frames themselves: LiDAR free-space / hit geometry (on the geometric branch and on
the final logits, ``loss.free_space``), the 2D pseudo labels of a
real segmenter (computed once and cached as ``DIR/pseudo_2d/<frame>.png``) through the 2D head, the lifted 3D
pseudo labels and the scatter-accumulated projection, the confident teacher, and the unobserved-space prior. The
voxel CE / Lovasz terms are off, unless ``--replay ROOT`` mixes labelled frames of the checkpoint's training world
into the adaptation (``--replay-share`` of each epoch, :mod:`occle_core.data.replay`): those frames keep the
checkpoint's own labelled recipe (voxel CE / Lovasz at its weights, its label budget) against forgetting.
Training is the engine's :class:`~occle_core.engine.trainer.Trainer` (tqdm, TensorBoard under ``DIR/tb``,
``DIR/checkpoint.pt`` written atomically, ``--resume``), fed those frames.

Guard rail against collapse: every ``--guard-every`` steps (and before the first) the model predicts the
adaptation frames (``--guard-frames`` of them, evenly spaced) and the predicted occupied share of the
LiDAR-observed voxels is divided by the share the LiDAR found occupied (:mod:`occle_core.consistency`). A ratio
beyond ``--guard-warn`` (or below its inverse) prints a warning; beyond ``--guard-stop`` the run stops, its drifted
weights are dropped and ``DIR/model.pt`` is written from the last checkpoint, which passed the guard (checkpoints
are written at guard steps only).

Before and after: the label-free consistency table of the held-out frames (``--hold-out``; the adaptation frames
themselves when none is held out) in ``DIR/consistency_before.json`` / ``consistency_after.json``. The segmenter
is used for training only; the adapted checkpoint predicts from camera + LiDAR as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset

from occle_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from occle_core.config import OccleConfig
from occle_core.consistency import ConsistencyReport, consistency_frame, consistency_report, frame_consistency, pool
from occle_core.data.augment import Augmentation
from occle_core.data.factory import LABEL_FREE_DATASETS, TrainFrames, build_dataset, build_label_free
from occle_core.data.label_png import read_label_png, write_label_png
from occle_core.data.replay import MixedFrames, ReplayFrames, replay_slots
from occle_core.data.sample import Sample
from occle_core.engine.reproducibility import isolated_rng, seed_of
from occle_core.engine.trainer import CHECKPOINT_NAME, MODEL_NAME, Trainer
from occle_core.evaluate import frame_indices

PSEUDO_DIR = "pseudo_2d"
GUARD_LOG = "guard_log.jsonl"
BEFORE_JSON = "consistency_before.json"
AFTER_JSON = "consistency_after.json"
SEGMENTERS = ("deeplab-cityscapes",)


class GuardStopError(RuntimeError):
    """The predicted occupied share drifted beyond the stop factor."""


def frame_key(frame_id: str) -> str:
    """A file name for a frame id (``08/000120`` -> ``08_000120``)."""
    return frame_id.replace("/", "_").replace("\\", "_")


class AdaptFrames(Dataset):
    """Frames of a reader with their cached 2D pseudo labels on the front camera (no voxel labels).

    Args:
        reader: a dataset of :class:`Sample`; indices: the frames of it to serve; pseudo_dir: the label cache.
        augment / seed: ``data.height_shift`` and ``data.flip`` (:class:`~occle_core.data.augment.Augmentation`,
            drawn per frame and epoch from ``(seed, epoch, frame)``; None = off) and ``train.seed``.
    """

    def __init__(
        self,
        reader: Dataset,
        indices: Sequence[int],
        pseudo_dir: Path,
        augment: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.reader, self.indices, self.pseudo_dir = reader, list(indices), Path(pseudo_dir)
        self.augment, self.seed = augment, int(seed)
        self.epoch = 0  # set by the trainer

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        s: Sample = self.reader[self.indices[i]]
        s.cameras[0].pseudo2d = read_label_png(self.pseudo_dir / f"{frame_key(s.frame_id)}.png")
        if self.augment is None:
            return s
        with isolated_rng(seed_of(self.seed, self.epoch, i)):
            drawn = self.augment.draw()
        return self.augment.apply(s, drawn)


def cache_pseudo_labels(
    reader: Dataset, indices: Sequence[int], make_labeller: Callable[[], Callable], pseudo_dir: Path
) -> int:
    """Write ``pseudo_dir/<frame>.png`` for each frame that has none yet; the labeller is built only when one is
    missing. Returns the number of label maps computed."""
    from tqdm import tqdm

    labeller, done = None, 0
    for i in tqdm(indices, desc="pseudo labels", unit="img", disable=not sys.stderr.isatty()):
        s: Sample = reader[i]
        path = Path(pseudo_dir) / f"{frame_key(s.frame_id)}.png"
        if path.is_file():
            continue
        labeller = labeller or make_labeller()
        write_label_png(path, labeller(s.image, s.frame_id))
        done += 1
    return done


def segmenter_factory(name: str, model_path: str, classes: str) -> Callable[[], Callable]:
    """A zero-argument builder of the named segmenter mapped to the ``classes`` table (loaded on first use)."""
    if name not in SEGMENTERS:
        raise ValueError(f"--segmenter must be one of {list(SEGMENTERS)}, got {name!r}")

    def build() -> Callable:
        from occle_core.pseudo.align import load_label_map
        from occle_core.pseudo.tflite_segmenter import TFLiteSegmenter

        return TFLiteSegmenter(model_path, load_label_map("cityscapes", classes))

    return build


class OccupancyGuard:
    """Step hook: predicted vs LiDAR-found occupied share of the observed voxels of the adaptation frames.

    Args:
        samples: the adaptation frames (held in memory); every: check period in steps (and at the last step);
        warn / stop: factors (> 1) on the ratio, in either direction; log_path: one JSON line per check.
    """

    def __init__(self, samples: Sequence[Sample], every: int, warn: float, stop: float, log_path: Path) -> None:
        if not 1.0 < warn <= stop:
            raise ValueError(f"guard factors must satisfy 1 < warn <= stop, got warn={warn} stop={stop}")
        self.frames = [consistency_frame(s) for s in samples]
        self.every, self.warn, self.stop, self.log_path = int(every), float(warn), float(stop), Path(log_path)
        self.last_ratio = float("nan")

    def ratio(self, trainer: Trainer) -> tuple[float, float, float]:
        """(ratio, predicted share, LiDAR share) of the observed voxels, pooled over the frames."""
        from occle_core.predictor import Predictor

        predictor = Predictor.from_model(trainer.model, trainer.cfg, str(trainer.device))
        grid, classes = predictor.grid, predictor.classes
        counts = [
            frame_consistency(f.points, predictor.predict(f.image, f.points, f.calib), grid, classes, origin=f.origin)
            for f in self.frames
        ]
        total = pool(counts)
        pred, lidar = total.observed_occupied_share, total.lidar_occupied_share
        return pred / lidar if lidar > 0 else float("nan"), pred, lidar

    def __call__(self, trainer: Trainer, values: dict[str, float] | None = None) -> None:
        """Check at step 0 and every ``every`` steps; warn, or raise :class:`GuardStopError` on a drift."""
        if trainer.step % self.every and trainer.step < trainer.cfg.train.steps:
            return
        ratio, pred, lidar = self.ratio(trainer)
        self.last_ratio = ratio
        drift = max(ratio, 1.0 / ratio) if ratio > 0 else float("inf")
        state = "stop" if drift > self.stop and trainer.step > 0 else "warn" if drift > self.warn else "ok"
        rec = {"step": trainer.step, "ratio": ratio, "predicted_share": pred, "lidar_share": lidar, "state": state}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if state != "ok":
            print(
                f"occle-adapt: guard {state} at step {trainer.step}: predicted occupied share of the observed voxels "
                f"{100 * pred:.1f}% vs LiDAR {100 * lidar:.1f}% (x{ratio:.2f}; warn beyond x{self.warn}, "
                f"stop beyond x{self.stop})",
                file=sys.stderr,
                flush=True,
            )
        if state == "stop":
            raise GuardStopError(f"occupied share drifted x{ratio:.2f} from the LiDAR's at step {trainer.step}")


def adaptation_config(base: OccleConfig, args: argparse.Namespace) -> OccleConfig:
    """The checkpoint's config with the adaptation's steps, rate and folders; the voxel-label terms are off unless
    labelled frames are replayed (``args.replay``), which keep the checkpoint's weights for them."""
    replay = bool(getattr(args, "replay", None))
    loss = replace(
        base.loss, voxel_ce=base.loss.voxel_ce if replay else 0.0, lovasz=base.loss.lovasz if replay else 0.0,
        projection=args.projection, free_space=args.free_space, unobserved_prior=args.unobserved_prior,
        ground=args.ground, pseudo_voxel=args.pseudo_voxel,
    )  # fmt: skip
    train = replace(
        base.train, steps=args.steps, lr=args.lr, out_dir=str(args.out), ckpt_every=args.guard_every,
        eval_every=0, log_every=1, warmup=0.0, schedule="cosine",
    )  # fmt: skip
    data = replace(base.data, root=str(args.data), val_sequences=[])
    cfg = replace(base, data=data, loss=loss, train=train)
    if not args.overrides:
        return cfg
    from occle_core.train import parse_overrides

    doc = cfg.to_dict()
    for section, values in parse_overrides(args.overrides).items():
        doc.setdefault(section, {}).update(values)
    return OccleConfig.from_dict(doc)


def split_frames(reader: Dataset, hold_out: Sequence[str]) -> tuple[list[int], list[int]]:
    """(adaptation indices, held-out indices) of ``reader`` by frame id.

    Raises:
        ValueError: a held-out id that is not a frame of the reader, or nothing left to adapt on.
    """
    ids = [reader[i].frame_id for i in range(len(reader))]
    unknown = sorted(set(hold_out) - set(ids))
    if unknown:
        raise ValueError(f"--hold-out {unknown} are not frames of the data (have {ids})")
    held = [i for i, f in enumerate(ids) if f in set(hold_out)]
    train = [i for i, f in enumerate(ids) if f not in set(hold_out)]
    if not train:
        raise ValueError("--hold-out leaves no frame to adapt on")
    return train, held


def training_frames(
    args: argparse.Namespace, base: OccleConfig, cfg: OccleConfig, target: Dataset, augment: Augmentation
) -> Dataset:
    """The adaptation's training set: the target frames, with ``args.replay``'s labelled frames mixed in.

    The replay frames are read in the checkpoint's grid and classes (``base``) from ``args.replay`` (sequences
    ``args.replay_sequences``, default the checkpoint's training sequences) under its label budget, with the
    adaptation's own ``augment`` (the target frames').
    """
    if not getattr(args, "replay", None):
        return target
    sequences = list(args.replay_sequences or base.data.train_sequences)
    d = replace(base.data, root=str(args.replay), train_sequences=sequences, val_sequences=[])
    labelled = TrainFrames.of(build_dataset(replace(base, data=d), "train"), d, cfg.train.seed, augment)
    return MixedFrames(target, ReplayFrames(labelled, replay_slots(len(target), args.replay_share)))


def keep_last_good(out: Path) -> Path:
    """Write ``out/model.pt`` (weights + config) from ``out/checkpoint.pt``, the last state that passed the guard."""
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    keys = ("format", "version", "config", "classes", "grid", "model", "step", "class_weights")
    save_checkpoint(out / MODEL_NAME, {k: ckpt[k] for k in keys if k in ckpt})
    return out / MODEL_NAME


def report_of(trainer: Trainer, reader: Dataset, indices: Sequence[int]) -> ConsistencyReport:
    """Consistency of the trainer's current model on the frames ``indices`` of ``reader``."""
    from occle_core.predictor import Predictor

    predictor = Predictor.from_model(trainer.model, trainer.cfg, str(trainer.device))
    report = consistency_report(predictor, (consistency_frame(reader[i]) for i in indices))
    trainer.model.train()
    return report


def run_adaptation(args: argparse.Namespace, hooks: Sequence[Callable] = (), reader: Dataset | None = None) -> dict:
    """Adapt ``args.checkpoint`` as the arguments say; returns a summary (also written to ``DIR/adapt.json``).

    Args:
        hooks: extra trainer step hooks, run before the guard (the guard checks the state a checkpoint then saves).
        reader: the frames (a dataset of :class:`Sample` in the checkpoint's grid frame, front camera first);
            None: ``build_label_free(args.dataset, args.data, args.sequences)``.
    """
    out = Path(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    base = OccleConfig.from_dict(ckpt["config"])
    cfg = adaptation_config(base, args)
    reader = build_label_free(args.dataset, args.data, args.sequences) if reader is None else reader
    train_idx, held_idx = split_frames(reader, args.hold_out or [])
    pseudo_dir = out / PSEUDO_DIR
    computed = cache_pseudo_labels(
        reader, train_idx, segmenter_factory(args.segmenter, args.segmenter_model, cfg.data.dataset), pseudo_dir
    )
    guard_idx = [train_idx[i] for i in frame_indices(len(train_idx), args.guard_frames)]
    guard = OccupancyGuard(
        [reader[i] for i in guard_idx], args.guard_every, args.guard_warn, args.guard_stop, out / GUARD_LOG
    )
    augment = Augmentation.of(cfg.data)
    target = AdaptFrames(reader, train_idx, pseudo_dir, augment, cfg.train.seed)
    train_set = training_frames(args, base, cfg, target, augment)
    trainer = Trainer(
        cfg, out, resume=args.resume, device=args.device, progress=not args.no_progress,
        train_set=train_set, step_hooks=[*hooks, guard], class_weights=ckpt.get("class_weights"),
    )  # fmt: skip
    report_idx = held_idx or train_idx
    if trainer.step == 0:
        trainer.model.load_state_dict(ckpt["model"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict(ckpt["model"])
        (out / GUARD_LOG).unlink(missing_ok=True)
        guard(trainer)
        trainer.save()  # step 0: the last good state until a later guard step passes
        report_of(trainer, reader, report_idx).write_json(out / BEFORE_JSON)
    before = ConsistencyReport.from_json(json.loads((out / BEFORE_JSON).read_text()))
    try:
        result = trainer.fit()
        stopped_by = "signal" if result["stopped"] else None
    except GuardStopError as exc:
        print(f"occle-adapt: {exc}; keeping the last good checkpoint", file=sys.stderr)
        kept = load_checkpoint(keep_last_good(out))
        trainer.model.load_state_dict(kept["model"])
        stopped_by, result = "guard", {"step": int(kept["step"])}
    after = report_of(trainer, reader, report_idx)
    after.write_json(out / AFTER_JSON)
    summary = {
        "checkpoint": str(args.checkpoint),
        "frames_adapted": [reader[i].frame_id for i in train_idx],
        "frames_reported": [f.frame_id for f in after.frames],
        "held_out": bool(held_idx),
        "pseudo_labels_computed": computed,
        "step": result["step"],
        "stopped_by": stopped_by,
        "guard_ratio": guard.last_ratio,
        "before": before.total.metrics(),
        "after": after.total.metrics(),
    }
    (out / "adapt.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "before_table": before.table(), "after_table": after.table()}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``occle-adapt``."""
    p = argparse.ArgumentParser(prog="occle-adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=LABEL_FREE_DATASETS, help="reader of the frames")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--sequences", nargs="+", help="sequences / drives / split / scenes of the reader")
    return add_adapt_arguments(p)


def add_adapt_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of an adaptation other than where its frames come from (shared by ``occle-adapt-bag``)."""
    p.add_argument("--checkpoint", required=True, help="the checkpoint to adapt (e.g. models/occle_tiny_synthetic.pt)")
    p.add_argument("--segmenter", required=True, choices=SEGMENTERS, help="2D segmenter of the pseudo labels")
    p.add_argument("--segmenter-model", required=True, help="its model file (.tflite); loaded only on a cache miss")
    p.add_argument("--out", required=True, help="run folder (pseudo-label cache, checkpoints, logs, reports)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine decay)")
    p.add_argument("--hold-out", nargs="+", help="frame ids kept out of adaptation and reported before / after")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    # defaults measured on the real KITTI frames (docs/real_frames.md): with the projection at its training weight
    # (0.5) and free_space 1 the occupied share of the observed voxels drifted from x1.8 to x3 the LiDAR's in 50 steps
    p.add_argument("--projection", type=float, default=0.1, help="weight of loss.projection (2D pseudo labels)")
    p.add_argument("--free-space", type=float, default=2.0, help="weight of loss.free_space (LiDAR on the logits)")
    p.add_argument(
        "--ground", type=float, default=0.0, help="weight of loss.ground (LiDAR ground returns: a ground class)"
    )
    p.add_argument(
        "--pseudo-voxel", type=float, default=0.0,
        help="weight of loss.pseudo_voxel (the lifted 3D pseudo labels on the final logits)",
    )  # fmt: skip
    p.add_argument("--unobserved-prior", type=float, default=1.0, help="weight of loss.unobserved_prior")
    p.add_argument("--guard-every", type=int, default=10, help="guard check (and checkpoint) period in steps")
    p.add_argument("--guard-frames", type=int, default=8, help="adaptation frames the guard predicts (evenly spaced)")
    p.add_argument("--guard-warn", type=float, default=3.0, help="warn when the occupied-share ratio drifts beyond")
    p.add_argument("--guard-stop", type=float, default=5.0, help="stop and keep the last good checkpoint beyond")
    p.add_argument(
        "--replay",
        help="labelled frames to mix in against forgetting: a dataset root of the checkpoint's own kind (e.g. the "
        "synthetic scenes it was trained on, data/synthetic); their voxel labels keep its labelled recipe",
    )
    p.add_argument(
        "--replay-sequences", nargs="+", help="sequences of --replay (default: the checkpoint's training ones)"
    )
    p.add_argument("--replay-share", type=float, default=0.5, help="share of each epoch's frames taken from --replay")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-adapt``: 0 done, 3 stopped by the guard (last good checkpoint kept), 2 bad input (one line)."""
    args = build_parser().parse_args(argv)
    return run_command(args, lambda: build_label_free(args.dataset, args.data, args.sequences))


def run_command(
    args: argparse.Namespace, make_reader: Callable[[], Dataset], prog: str = "occle-adapt",
    errors: tuple[type[Exception], ...] = (),
) -> int:  # fmt: skip
    """Run an adaptation command on the frames ``make_reader()`` builds and print the before / after tables.

    Returns 0 done, 3 stopped by the guard (last good checkpoint kept), 2 bad input (one line on stderr, ``prog``
    first), also for the ``errors`` of the caller's reader.
    """
    try:
        if args.steps < 1 or args.guard_every < 1 or args.guard_frames < 1:
            raise ValueError("--steps, --guard-every and --guard-frames must be >= 1")
        summary = run_adaptation(args, reader=make_reader())
    except (ValueError, FileNotFoundError, ImportError, CheckpointError, *errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    where = "held-out" if summary["held_out"] else "adaptation (none held out)"
    print(f"before, {where} frames:\n{summary['before_table']}")
    print(f"after {summary['step']} steps, {where} frames:\n{summary['after_table']}")
    return 3 if summary["stopped_by"] == "guard" else 0


if __name__ == "__main__":
    sys.exit(main())
