"""OccLE's aligned 2D pseudo labels: a dataset-specific segmenter merged with an open-vocabulary one.

The dataset-specific segmenter (e.g. a Cityscapes / MSeg model) labels the classes it shares with the target
dataset; its labels are carried to target classes by a name table (``config/pseudo_label_map.yaml``). The
classes it lacks are asked of an open-vocabulary segmenter by text prompts, which answers with one binary mask
(and a score) per prompt class. The two are merged by Boolean mask operations with these precedence rules:

1. Start from the specific labels mapped to target classes (255 where the source class has no target).
2. An open-vocabulary mask of class ``c`` may write a pixel only if its score there is >= ``min_score`` and
   the specific label at that pixel is 255 ("unlabelled / other"), is ``c`` itself, or is one of the classes
   ``c`` refines (``refines`` in the map: e.g. ``trunk`` may overwrite ``vegetation``). It never overwrites
   another confident class of the specific segmenter.
3. Where several admissible masks overlap, the highest score wins (first mask on exact ties).
4. Pixels no admissible mask covers keep the specific label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from occle_core.labels import IGNORE_INDEX, ClassTable, class_table
from occle_core.pseudo.labeller import PseudoLabeller, check_image, check_labels, split_frame_id
from occle_core.resources import config_path

LABEL_MAP_FILE = "pseudo_label_map.yaml"


def normalise_name(name: str) -> str:
    """Class-name key: lower case, ``_``/``-`` as spaces, single spaces (``"Traffic_Sign"`` -> ``"traffic sign"``)."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class LabelMap:
    """How one source label space maps onto one target dataset.

    Attributes:
        source: source label space name (e.g. ``cityscapes``).
        classes: the target class table.
        mapping: normalised source name -> target class id, or None (no target class).
        source_names: the source class names by id (may be empty when only a model config knows them).
        open_vocab: target class id -> text prompts for the open-vocabulary segmenter.
        refines: target class id -> target class ids its open-vocabulary mask may overwrite.
    """

    source: str
    classes: ClassTable
    mapping: dict[str, int | None]
    source_names: tuple[str, ...] = ()
    open_vocab: dict[int, tuple[str, ...]] = field(default_factory=dict)
    refines: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def lut(self, source_names: Sequence[str] | None = None, strict: bool = False) -> np.ndarray:
        """(max(256, S),) uint8 lookup table source id -> target id (255 for no target / unknown ids).

        Args:
            source_names: names by source id (default: ``self.source_names``), e.g. a model's ``id2label``.
            strict: raise if a source name is not in the map (otherwise it maps to 255).
        """
        names = list(self.source_names if source_names is None else source_names)
        if not names:
            raise ValueError(f"label map {self.source!r}: no source class names to build a lookup table from")
        lut = np.full(max(256, len(names)), IGNORE_INDEX, np.uint8)
        unknown = []
        for i, name in enumerate(names):
            key = normalise_name(name)
            if key not in self.mapping:
                unknown.append(name)
                continue
            target = self.mapping[key]
            if target is not None:
                lut[i] = target
        if unknown and strict:
            raise ValueError(f"label map {self.source!r} -> {self.classes.name!r} has no entry for {unknown}")
        return lut

    def unmapped(self, source_names: Sequence[str]) -> list[str]:
        """Source names that the map does not mention (they become 255)."""
        return [n for n in source_names if normalise_name(n) not in self.mapping]


def _target_id(classes: ClassTable, name: str, where: str) -> int:
    index = {normalise_name(n): i for i, n in enumerate(classes.names)}
    key = normalise_name(name)
    if key not in index:
        raise ValueError(f"{where}: {name!r} is not a {classes.name} class (classes: {', '.join(classes.names)})")
    return index[key]


def load_label_map(source: str, target: str, path: str | Path | None = None) -> LabelMap:
    """Load the ``source`` -> ``target`` table from ``config/pseudo_label_map.yaml`` (or ``path``).

    Raises:
        ValueError: naming the file and the missing source / target / unknown class name.
    """
    path = Path(path) if path is not None else config_path(LABEL_MAP_FILE)
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    sources = doc.get("sources", {})
    if source not in sources:
        raise ValueError(f"{path}: no source label space {source!r} (have {sorted(sources)})")
    src = sources[source]
    targets = src.get("targets", {})
    if target not in targets:
        raise ValueError(f"{path}: source {source!r} has no table for target {target!r} (have {sorted(targets)})")
    classes = class_table(target)
    t = targets[target]
    where = f"{path} [{source} -> {target}]"
    mapping: dict[str, int | None] = {}
    for name, tname in (t.get("map") or {}).items():
        mapping[normalise_name(name)] = None if tname is None else _target_id(classes, tname, where)
    names = tuple(str(n) for n in src.get("names", []))
    missing = [n for n in names if normalise_name(n) not in mapping]
    if missing:
        raise ValueError(f"{where}: source classes without a map entry (use null for none): {missing}")
    open_vocab = {
        _target_id(classes, c, where): tuple(str(p) for p in (prompts or [c]))
        for c, prompts in (t.get("open_vocab") or {}).items()
    }
    refines = {
        _target_id(classes, c, where): tuple(_target_id(classes, p, where) for p in parents or [])
        for c, parents in (t.get("refines") or {}).items()
    }
    return LabelMap(source, classes, mapping, names, open_vocab, refines)


def align_pseudo_labels(
    specific: np.ndarray,
    masks: np.ndarray,
    mask_classes: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    refines: Mapping[int, Sequence[int]] | None = None,
    min_score: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Merge specific labels with open-vocabulary masks (rules in the module docstring).

    Args:
        specific: (H, W) uint8 target classes from the dataset-specific segmenter, 255 = none.
        masks: (M, H, W) bool open-vocabulary masks.
        mask_classes: (M,) target class of each mask.
        scores: (M,) score per mask, or (M, H, W) score per pixel.
        refines: target class -> classes its mask may overwrite.
        min_score: masks (pixels) scoring below it are ignored.

    Returns:
        (H, W) uint8 aligned labels.
    """
    specific = np.asarray(specific)
    if specific.ndim != 2:
        raise ValueError(f"specific labels must be (H, W), got shape {specific.shape}")
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1:] != specific.shape:
        raise ValueError(f"masks must be (M, H, W) with (H, W) = {specific.shape}, got {masks.shape}")
    M = masks.shape[0]
    cls = np.asarray(mask_classes, np.int64).reshape(-1)
    if cls.shape != (M,):
        raise ValueError(f"mask_classes must have {M} entries (one per mask), got {cls.shape}")
    sc = np.asarray(scores, np.float32)
    if sc.shape == (M,):
        sc = np.broadcast_to(sc[:, None, None], masks.shape)
    elif sc.shape != masks.shape:
        raise ValueError(f"scores must be (M,) or (M, H, W) = {masks.shape}, got {sc.shape}")
    out = specific.astype(np.uint8, copy=True)
    if M == 0:
        return out
    refines = refines or {}
    none = specific == ignore_index  # (H, W)
    best = np.full(specific.shape, -np.inf, np.float32)  # best admissible score so far
    for m in range(M):  # M is the handful of prompt classes; every step is a whole-image Boolean operation
        c = int(cls[m])
        allowed = none | (specific == c)
        for parent in refines.get(c, ()):
            allowed |= specific == parent
        take = masks[m] & allowed & (sc[m] >= min_score) & (sc[m] > best)
        out[take] = c
        best[take] = sc[m][take]
    return out


@dataclass
class OpenVocabResult:
    """Answer of an open-vocabulary segmenter.

    Attributes:
        masks: (M, H, W) bool, one mask per answered class.
        classes: (M,) int64 target class of each mask.
        scores: (M,) or (M, H, W) float32 confidence.
    """

    masks: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


class OpenVocabSegmenter(Protocol):
    """Segments the classes named by text prompts."""

    def segment(self, image: np.ndarray, prompts: Mapping[int, Sequence[str]], frame_id: str) -> OpenVocabResult:
        """Masks for ``prompts`` (target class -> text prompts) in ``image`` (H, W, 3) uint8."""
        ...


class FileOpenVocabSegmenter:
    """Open-vocabulary masks computed offline (e.g. by Grounded-SAM2 on another machine) and stored per frame.

    File: ``<root>/<pattern>`` (default ``sequences/{sequence}/open_vocab/{frame}.npz``) holding ``masks``
    (M, H, W) bool/uint8, ``classes`` (M,) target class ids and ``scores`` (M,) or (M, H, W) float.
    Classes not in the requested prompts are dropped.
    """

    def __init__(self, root: str | Path, pattern: str = "sequences/{sequence}/open_vocab/{frame}.npz") -> None:
        self.root = Path(root)
        self.pattern = pattern

    def path(self, frame_id: str) -> Path:
        """File holding the masks of ``frame_id``."""
        sequence, frame = split_frame_id(frame_id)
        return self.root / self.pattern.format(sequence=sequence, frame=frame, frame_id=frame_id)

    def segment(self, image: np.ndarray, prompts: Mapping[int, Sequence[str]], frame_id: str) -> OpenVocabResult:
        """The stored masks of ``frame_id`` for the classes in ``prompts``."""
        image = check_image(image)
        path = self.path(frame_id)
        if not path.is_file():
            raise FileNotFoundError(f"open-vocabulary mask file not found for frame {frame_id!r}: {path}")
        with np.load(path, allow_pickle=False) as npz:
            for key in ("masks", "classes", "scores"):
                if key not in npz.files:
                    raise ValueError(f"{path}: missing array {key!r} (expected masks, classes, scores)")
            masks, classes, scores = npz["masks"].astype(bool), npz["classes"].astype(np.int64), npz["scores"]
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"{path}: masks must be (M, {image.shape[0]}, {image.shape[1]}), got {masks.shape}")
        if classes.shape != (len(masks),) or scores.shape[:1] != (len(masks),):
            raise ValueError(f"{path}: classes {classes.shape} and scores {scores.shape} need one entry per mask")
        keep = np.isin(classes, list(prompts))
        return OpenVocabResult(masks[keep], classes[keep], np.asarray(scores, np.float32)[keep])


class AlignedLabeller(PseudoLabeller):
    """OccLE aligned pseudo labels: ``specific`` labels (already in target classes) merged with the masks an
    open-vocabulary segmenter gives for ``label_map.open_vocab`` (see :func:`align_pseudo_labels`).

    Args:
        specific: labeller producing target-class labels (e.g. :class:`HFSegmenterLabeller`).
        open_vocab: open-vocabulary segmenter (prompted with ``label_map.open_vocab``).
        label_map: the source -> target table (gives prompts and refinement rules).
        min_score: open-vocabulary masks/pixels below this score are ignored.
    """

    def __init__(
        self, specific: PseudoLabeller, open_vocab: OpenVocabSegmenter, label_map: LabelMap, min_score: float = 0.5
    ) -> None:
        self.specific = specific
        self.open_vocab = open_vocab
        self.label_map = label_map
        self.classes = label_map.classes
        self.min_score = float(min_score)

    def label(self, image: np.ndarray, frame_id: str) -> np.ndarray:
        """Aligned (H, W) uint8 labels of ``image``."""
        image = check_image(image)
        spec = check_labels(self.specific.label(image, frame_id), self.classes, "specific labeller")
        if spec.shape != image.shape[:2]:
            raise ValueError(f"specific labeller returned {spec.shape}, expected the image size {image.shape[:2]}")
        res = self.open_vocab.segment(image, self.label_map.open_vocab, frame_id)
        return align_pseudo_labels(
            spec, res.masks, res.classes, res.scores, self.label_map.refines, self.min_score, self.classes.ignore_index
        )
