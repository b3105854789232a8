"""The domain-randomisation ablation: what each family of synthetic-world randomisation does to the real-frame
and other-rig consistency of a synthetic-trained model (``config/randomisation.yaml``).

For every variant (``base`` = the occle-synth defaults, then one randomisation family on top of it, then all of
them together):

1. its training data, N sequences x F frames written by ``occle-synth`` (in this process) into
   ``DATA_ROOT/<variant>/`` with the variant's knobs (a variant that changes only the training, not the world,
   shares the folder of the first variant with its knobs), reused when a sequence was written with the same arguments
   (``occle_synth_argv.json`` beside it);
2. the start checkpoint fine-tuned S steps on it with the checkpoint's own labelled recipe (the definition's
   ``finetune.overrides``: 10 % voxel labels, one seed for every variant) into ``OUT/<variant>/model.pt``
   (the trainer's atomic checkpoint writer; an existing ``model.pt`` is kept, an interrupted run resumes);
3. that model and the start checkpoint evaluated on the six real KITTI object frames (pooled label-free
   consistency, vehicle checks on 002155; skipped when the folder is absent), on held-out synthetic frames of a
   nuScenes-like 32-beam rig and of the default 64-beam rig (one scene, consistency) and the home-domain IoU /
   mIoU on the latter's voxel truth.

``OUT/randomisation.json`` holds every row (percentages; timings); ``OUT/randomisation.md`` the tables, each
variant with its difference to ``base``.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    from occle_core.config import OccleConfig

DEFAULT_DEFINITION = Path("config/randomisation.yaml")
#: occle-synth knobs a variant may set (its flags with ``-`` written ``_``; also the keys of ``synthetic.json``)
KNOBS = ("beams", "lidar_height", "lidar_pitch", "intensity", "dropout", "range_noise", "fov_only", "appearance",
         "accumulate")  # fmt: skip
#: a family's key for training overrides (``section.key=value``) instead of an occle-synth knob: a family of the
#: training recipe (e.g. the height-shift augmentation), applied to the variants that name it
TRAIN_KEY = "train"
ARGV_FILE = "occle_synth_argv.json"
FINETUNE_RECORD = "finetune.json"
REAL_KITTI = "real_kitti"
START = "start"
#: the consistency ratios reported per evaluation set (keys of :meth:`FrameConsistency.metrics`)
CONSISTENCY = ("hit_recall", "free_false_occupancy", "ground_consistency", "occupied_share")
VEHICLE = ("vehicle_recall", "false_vehicle_rate", "false_vehicle_share")
HEADERS = {
    "hit_recall": "hit recall",
    "free_false_occupancy": "free false occ.",
    "ground_consistency": "ground",
    "occupied_share": "grid occupied",
    "vehicle_recall": "vehicle recall",
    "false_vehicle_rate": "false-vehicle rate",
    "false_vehicle_share": "false-vehicle share",
    "iou": "IoU",
    "miou": "mIoU",
}


@dataclass
class EvalRig:
    """A held-out synthetic sequence: its sequence id under ``DATA_ROOT/eval`` and its knobs on top of ``base``."""

    sequence: str
    knobs: dict[str, Any]


@dataclass
class Definition:
    """A loaded ``config/randomisation.yaml`` (see the file for the meaning of every entry)."""

    checkpoint: str
    data_root: str
    out: str
    sequences: int
    frames: int
    seed: int
    image_scale: float
    steps: int
    ckpt_every: int
    overrides: list[str]
    base: dict[str, Any]
    families: dict[str, dict[str, Any]]
    variants: dict[str, list[str]]
    eval_seed: int
    eval_frames: int
    rigs: dict[str, EvalRig]
    home_iou: str | None = None
    kitti: str | None = None

    def check(self) -> Definition:
        """Raise ``ValueError`` naming the first bad entry; returns ``self``."""
        for name, value in (("data.sequences", self.sequences), ("data.frames", self.frames),
                            ("finetune.steps", self.steps), ("evaluation.frames", self.eval_frames)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.image_scale > 0:
            raise ValueError(f"data.image_scale must be > 0, got {self.image_scale}")
        if self.seed <= self.eval_seed < self.seed + self.sequences:
            raise ValueError(f"evaluation.seed {self.eval_seed} is one of the training seeds {self.seed}..")
        for where, knobs in [("base", self.base), *((f"families.{k}", v) for k, v in self.families.items()),
                             *((f"evaluation.rigs.{k}", r.knobs) for k, r in self.rigs.items())]:  # fmt: skip
            unknown = sorted(set(knobs) - set(KNOBS) - ({TRAIN_KEY} if where.startswith("families.") else set()))
            if unknown:
                raise ValueError(f"{where}: unknown occle-synth knob(s) {unknown}; known: {list(KNOBS)}")
        for variant, fams in self.variants.items():
            missing = [f for f in fams if f not in self.families]
            if missing:
                raise ValueError(f"variants.{variant}: unknown famil(ies) {missing}; known: {list(self.families)}")
        if "base" not in self.variants or self.variants["base"]:
            raise ValueError("variants must hold `base: []` (the reference of every delta)")
        if self.home_iou is not None and self.home_iou not in self.rigs:
            raise ValueError(f"evaluation.home_iou must be one of {list(self.rigs)}, got {self.home_iou!r}")
        for index in range(self.sequences):  # every knob value resolves (cycle / uniform well-formed)
            for name in self.variants:
                self.knobs(name, index)
        from occle_core.train import parse_overrides

        for name in self.variants:  # every training override parses
            try:
                parse_overrides(self.train_overrides(name))
            except ValueError as exc:
                raise ValueError(f"variants.{name}: a training override (finetune.overrides, `train`): {exc}") from exc
        return self

    def knobs(self, variant: str, index: int) -> dict[str, Any]:
        """The occle-synth knobs of training sequence ``index`` of ``variant``: ``base``, then its families."""
        merged = dict(self.base)
        for family in self.variants[variant]:
            merged.update({k: v for k, v in self.families[family].items() if k != TRAIN_KEY})
        seed = self.seed + index
        return {k: resolve_knob(v, index, seed, k) for k, v in merged.items()}

    def data_variant(self, variant: str) -> str:
        """The variant whose data folder ``variant`` trains on: the first variant of the definition with the same
        occle-synth knobs for every sequence (a variant that differs in its ``train`` families only, such as
        ``all_shift``, shares the world of ``all``)."""
        world = [self.knobs(variant, i) for i in range(self.sequences)]
        return next(v for v in self.variants if [self.knobs(v, i) for i in range(self.sequences)] == world)

    def train_overrides(self, variant: str) -> list[str]:
        """The fine-tuning overrides of ``variant``: ``finetune.overrides``, then its families' ``train`` entries."""
        extra = [str(o) for family in self.variants[variant] for o in self.families[family].get(TRAIN_KEY) or []]
        return [*self.overrides, *extra]


def resolve_knob(value: Any, index: int, seed: int, name: str) -> Any:
    """A knob's value for sequence ``index``: a constant, ``{cycle: [...]}`` (item ``index`` mod length) or
    ``{uniform: [lo, hi]}`` (drawn from ``seed`` and the knob's name, so every variant draws the same value)."""
    if not isinstance(value, dict):
        return value
    if set(value) == {"cycle"} and isinstance(value["cycle"], list) and value["cycle"]:
        return value["cycle"][index % len(value["cycle"])]
    if set(value) == {"uniform"} and isinstance(value["uniform"], list) and len(value["uniform"]) == 2:
        lo, hi = (float(v) for v in value["uniform"])
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        return round(float(rng.uniform(lo, hi)), 3)
    raise ValueError(f"knob {name}: expected a constant, {{cycle: [..]}} or {{uniform: [lo, hi]}}, got {value!r}")


def load_definition(path: str | Path = DEFAULT_DEFINITION) -> Definition:
    """Read and check a randomisation definition.

    Raises:
        FileNotFoundError: no such file. ValueError: a missing or malformed entry, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"randomisation definition not found: {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    try:
        data, tune, ev = doc["data"], doc["finetune"], doc["evaluation"]
        defn = Definition(
            checkpoint=str(doc["checkpoint"]), data_root=str(doc["data_root"]), out=str(doc["out"]),
            sequences=int(data["sequences"]), frames=int(data["frames"]), seed=int(data["seed"]),
            image_scale=float(data["image_scale"]), steps=int(tune["steps"]), ckpt_every=int(tune["ckpt_every"]),
            overrides=[str(o) for o in tune.get("overrides") or []], base=dict(doc["base"]),
            families={str(k): dict(v) for k, v in doc["families"].items()},
            variants={str(k): [str(f) for f in v or []] for k, v in doc["variants"].items()},
            eval_seed=int(ev["seed"]), eval_frames=int(ev["frames"]),
            rigs={str(k): EvalRig(str(v["sequence"]), dict(v.get("knobs") or {})) for k, v in ev["rigs"].items()},
            home_iou=ev.get("home_iou"), kitti=ev.get("kitti"),
        )  # fmt: skip
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: missing or malformed entry {exc}") from exc
    return defn.check()


# ------------------------------------------------------------------------------------------------ data


def synth_argv(knobs: dict[str, Any], seed: int, frames: int, sequence: str, image_scale: float) -> list[str]:
    """The occle-synth arguments (without ``--out`` / ``--quiet``) of one sequence with ``knobs``."""
    argv = ["--seed", str(seed), "--frames", str(frames), "--sequence", sequence, "--image-scale", f"{image_scale:g}"]
    for key in KNOBS:
        value = knobs.get(key)
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def ensure_sequence(root: Path, argv: list[str], quiet: bool) -> tuple[Path, float]:
    """Write ``root/sequences/<id>`` with occle-synth ``argv`` unless it was written with exactly those arguments.

    Returns:
        (the sequence folder, seconds spent writing it; 0 when reused).

    Raises:
        ValueError: the folder exists but was written with other (or unknown) arguments; RuntimeError: occle-synth
        failed.
    """
    from occle_core.synth.cli import main as synth_main

    seq_dir = root / "sequences" / argv[argv.index("--sequence") + 1]
    record = seq_dir / ARGV_FILE
    if record.is_file() and json.loads(record.read_text()) == argv:
        return seq_dir, 0.0
    if seq_dir.exists():
        raise ValueError(f"{seq_dir} exists but was not written with occle-synth {' '.join(argv)}; delete it")
    t0 = time.perf_counter()
    if synth_main(["--out", str(root), *argv, *(["--quiet"] if quiet else [])]) != 0:
        raise RuntimeError(f"occle-synth --out {root} {' '.join(argv)} failed")
    record.write_text(json.dumps(argv) + "\n")
    return seq_dir, time.perf_counter() - t0


def variant_data(defn: Definition, variant: str, quiet: bool = False) -> tuple[Path, list[str], float]:
    """The training data of ``variant``: (root, sequence ids, seconds spent writing); variants of one world
    share a folder (:meth:`Definition.data_variant`)."""
    root = Path(defn.data_root) / defn.data_variant(variant)
    ids, spent = [], 0.0
    for i in range(defn.sequences):
        seq = f"{i:02d}"
        argv = synth_argv(defn.knobs(variant, i), defn.seed + i, defn.frames, seq, defn.image_scale)
        spent += ensure_sequence(root, argv, quiet)[1]
        ids.append(seq)
    return root, ids, spent


def eval_data(defn: Definition, quiet: bool = False) -> Path:
    """The held-out synthetic sequences of every evaluation rig under ``DATA_ROOT/eval``; returns that root."""
    root = Path(defn.data_root) / "eval"
    for rig in defn.rigs.values():
        knobs = {**defn.base, **rig.knobs}
        argv = synth_argv(knobs, defn.eval_seed, defn.eval_frames, rig.sequence, defn.image_scale)
        ensure_sequence(root, argv, quiet)
    return root


# ------------------------------------------------------------------------------------------------ fine-tuning


def finetune_config(
    start: dict, defn: Definition, variant: str, root: Path, sequences: list[str], out: Path
) -> OccleConfig:
    """The :class:`~occle_core.config.OccleConfig` of a fine-tuning run: the start checkpoint's saved config with
    ``variant``'s overrides (:meth:`Definition.train_overrides`), trained on ``sequences`` of ``root`` for
    ``defn.steps`` steps without evaluation."""
    from occle_core.config import OccleConfig
    from occle_core.train import parse_overrides

    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in start["config"].items()}
    fixed = {
        "data": {"root": str(root), "train_sequences": sequences, "val_sequences": []},
        "train": {"steps": defn.steps, "eval_every": 0, "eval_frames": 0, "ckpt_every": defn.ckpt_every,
                  "out_dir": str(out)},
    }  # fmt: skip
    for overrides in (parse_overrides(defn.train_overrides(variant)), fixed):
        for section, values in overrides.items():
            doc.setdefault(section, {}).update(values)
    return OccleConfig.from_saved(doc)


def finetune(
    defn: Definition, variant: str, root: Path, sequences: list[str], device: str = "auto", quiet: bool = False
) -> dict[str, Any]:
    """Fine-tune the start checkpoint on ``variant``'s data into ``OUT/<variant>/model.pt``.

    A ``model.pt`` already there is kept (its recorded timing returned); a ``checkpoint.pt`` without it resumes.

    Returns:
        ``{"model", "steps", "s_per_step", "train_s"}`` (also written to ``OUT/<variant>/finetune.json``).
    """
    from occle_core.checkpoint import load_checkpoint
    from occle_core.engine.trainer import CHECKPOINT_NAME, MODEL_NAME, Trainer

    out = Path(defn.out) / variant
    if (out / MODEL_NAME).is_file():
        return finetune_record(defn, variant)
    start = load_checkpoint(defn.checkpoint)
    cfg = finetune_config(start, defn, variant, root, sequences, out)
    t0 = time.perf_counter()
    resume = (out / CHECKPOINT_NAME).is_file()
    trainer = Trainer(cfg, out, resume=resume, device=device, progress=not quiet, tensorboard=False)
    if trainer.step == 0:
        trainer.model.load_state_dict(start["model"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict(start["model"])
    result = trainer.fit()
    if result["stopped"]:
        raise RuntimeError(f"fine-tuning of {variant} was stopped at step {result['step']}; run again to resume")
    entry = {"model": str(out / MODEL_NAME), "steps": int(result["step"]), "s_per_step": result["s_per_step"],
             "train_s": time.perf_counter() - t0, "resumed": resume}  # fmt: skip
    (out / FINETUNE_RECORD).write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def finetune_record(defn: Definition, variant: str) -> dict[str, Any]:
    """The record of ``variant``'s existing fine-tuned model (``finetune.json``; steps None when it is missing).

    Raises:
        FileNotFoundError: ``OUT/<variant>/model.pt`` does not exist.
    """
    from occle_core.engine.trainer import MODEL_NAME

    out = Path(defn.out) / variant
    if not (out / MODEL_NAME).is_file():
        raise FileNotFoundError(f"{out / MODEL_NAME} not found (run without --eval-only to train it)")
    record = out / FINETUNE_RECORD
    entry = json.loads(record.read_text()) if record.is_file() else {"steps": None}
    entry["model"] = str(out / MODEL_NAME)  # where it is now
    if entry["steps"] != defn.steps:
        print(f"note: {out / MODEL_NAME} was fine-tuned for {entry['steps']} steps, not {defn.steps}; kept", flush=True)
    return entry


# ------------------------------------------------------------------------------------------------ evaluation


def _pct(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(100.0 * float(value), 2)


def consistency_scores(predictor: Any, reader: Any) -> dict[str, float | None]:
    """Pooled label-free consistency (percent) of ``predictor`` on every frame of ``reader``."""
    from occle_core.consistency import consistency_frame, consistency_report

    report = consistency_report(predictor, (consistency_frame(reader[i]) for i in range(len(reader))))
    return {k: _pct(v) for k, v in report.total.metrics().items()} | {"frames": len(report.frames)}


def evaluate_checkpoint(
    path: str | Path, defn: Definition, eval_root: Path, device: str = "auto", kitti: bool = True
) -> dict[str, Any]:
    """Every evaluation of one checkpoint: ``{REAL_KITTI: scores | None, <rig>: scores, ...}``; the home rig's
    scores also hold ``iou`` / ``miou`` (official), percent."""
    from occle_core.checkpoint import load_model
    from occle_core.data.factory import build_dataset, build_label_free
    from occle_core.evaluate import evaluate_model
    from occle_core.predictor import Predictor

    model, cfg, _ = load_model(path, "cpu")
    predictor = Predictor.from_model(model, cfg, device)
    out: dict[str, Any] = {REAL_KITTI: None}
    if kitti:
        out[REAL_KITTI] = consistency_scores(predictor, build_label_free("kitti_object", defn.kitti))
    for name, rig in defn.rigs.items():
        out[name] = consistency_scores(predictor, build_label_free("semantic_kitti", eval_root, [rig.sequence]))
    if defn.home_iou is not None:
        cfg.data.root, cfg.data.val_sequences = str(eval_root), [defn.rigs[defn.home_iou].sequence]
        scores, _ = evaluate_model(predictor.model, build_dataset(cfg, "val"), cfg, predictor.device)
        out[defn.home_iou].update(iou=_pct(scores["iou"]), miou=_pct(scores["miou"]))
    return out


# ------------------------------------------------------------------------------------------------ report


def markdown_tables(rows: list[dict[str, Any]], defn: Definition) -> str:
    """One table per evaluation set: a row per model, each variant's cells with its difference to ``base``."""
    base = next((r for r in rows if r["variant"] == "base"), None)
    sets = [(REAL_KITTI, "Real KITTI object frames (pooled)", CONSISTENCY + VEHICLE)]
    for name, rig in defn.rigs.items():
        knobs = {**defn.base, **rig.knobs}
        title = f"Synthetic {name}: {knobs['beams']} beams, {knobs['lidar_height']} m (seed {defn.eval_seed})"
        sets.append((name, title, CONSISTENCY + (("iou", "miou") if name == defn.home_iou else ())))
    parts = []
    for key, title, cols in sets:
        if all(r["eval"].get(key) is None for r in rows):
            parts.append(f"**{title}**: not evaluated\n")
            continue
        lines = [f"**{title}**\n", "| model | steps | " + " | ".join(HEADERS[c] for c in cols) + " |"]
        lines.append("|---" * (len(cols) + 2) + "|")
        for r in rows:
            ref = None if base is None or r["variant"] in ("base", START) else base["eval"].get(key)
            cells = [_cell((r["eval"].get(key) or {}).get(c), (ref or {}).get(c)) for c in cols]
            lines.append(f"| {r['variant']} | {r['steps']} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _cell(value: float | None, ref: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if ref is None else f"{value:.1f} ({value - ref:+.1f})"


def run_ablation(
    defn: Definition,
    variants: list[str] | None = None,
    eval_only: bool = False,
    kitti: bool = True,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Data, fine-tuning and evaluation of ``variants`` (default: all) and the start checkpoint; writes
    ``OUT/randomisation.json`` and ``OUT/randomisation.md`` and returns the JSON document.

    Args:
        eval_only: only evaluate (every variant's ``model.pt`` must exist).
        kitti: evaluate on the real KITTI frames (skipped with a message when ``defn.kitti`` is not a folder).

    Raises:
        ValueError: an unknown variant; FileNotFoundError: a missing model with ``eval_only``.
    """
    variants = list(defn.variants) if variants is None else variants
    unknown = [v for v in variants if v not in defn.variants]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; variants: {list(defn.variants)}")
    records = {v: finetune_record(defn, v) for v in variants} if eval_only else {}
    if kitti and not (defn.kitti and Path(defn.kitti).is_dir()):
        print(f"real KITTI frames not found at {defn.kitti}: the real-frame evaluation is skipped", flush=True)
        kitti = False
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    say(f"held-out synthetic rigs under {defn.data_root}/eval")
    eval_root = eval_data(defn, quiet)
    t0 = time.perf_counter()
    rows = [{"variant": START, "families": [], "steps": 0, "model": defn.checkpoint,
             "eval": evaluate_checkpoint(defn.checkpoint, defn, eval_root, device, kitti)}]  # fmt: skip
    rows[0]["timing"] = {"eval_s": round(time.perf_counter() - t0, 1)}
    for variant in variants:
        data_s = 0.0
        if eval_only:
            tune = records[variant]
        else:
            say(f"variant {variant}: data")
            root, seqs, data_s = variant_data(defn, variant, quiet)
            say(f"variant {variant}: fine-tuning ({defn.steps} steps)")
            tune = finetune(defn, variant, root, seqs, device, quiet)
        say(f"variant {variant}: evaluation")
        t0 = time.perf_counter()
        scores = evaluate_checkpoint(tune["model"], defn, eval_root, device, kitti)
        timing = {"data_s": round(data_s, 1), "s_per_step": tune.get("s_per_step"), "train_s": tune.get("train_s"),
                  "eval_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        rows.append({"variant": variant, "families": defn.variants[variant], "steps": tune.get("steps"),
                     "model": tune["model"], "timing": timing, "eval": scores})  # fmt: skip
        say(json.dumps({"variant": variant, **timing}))
    doc = {"definition": _definition_doc(defn), "rows": rows}
    out = Path(defn.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "randomisation.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out / "randomisation.json")
    (out / "randomisation.md").write_text(markdown_tables(rows, defn))
    return doc


def _definition_doc(defn: Definition) -> dict[str, Any]:
    """The definition as recorded in the JSON (every variant's resolved knobs per sequence included)."""
    doc = {k: v for k, v in vars(defn).items() if k != "rigs"}
    doc["rigs"] = {k: vars(r) for k, r in defn.rigs.items()}
    doc["knobs"] = {v: [defn.knobs(v, i) for i in range(defn.sequences)] for v in defn.variants}
    return doc


def with_options(defn: Definition, **options: Any) -> Definition:
    """``defn`` with the non-None ``options`` (fields of :class:`Definition`) replaced, checked again."""
    return replace(defn, **{k: v for k, v in options.items() if v is not None}).check()
