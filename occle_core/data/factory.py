"""Dataset construction from config: the reader of a split with its grid pooling, and the training view of it.

:func:`build_dataset` picks the reader of ``cfg.data.dataset`` (SemanticKITTI or Occ3D-nuScenes) for the
``train`` or ``val`` split (SemanticKITTI: with ``data.past_frames`` previous scans merged in and
``data.past_images`` past camera views, see :mod:`occle_core.data.multiframe`); :class:`TrainFrames` wraps a reader
for training (the label budget and per-frame seeded randomness, so that a resumed run reads the same frames the same
way).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from occle_core.config import DataConfig, OccleConfig
from occle_core.data.augment import Augmentation
from occle_core.data.label_budget import check_labelled_share, select_budget, select_labelled_frames
from occle_core.data.sample import Sample
from occle_core.engine.reproducibility import isolated_rng, seed_of
from occle_core.geometry import VoxelGrid


def standard_grid(dataset: str) -> VoxelGrid:
    """The dataset's full-resolution label grid (from ``config/<dataset>.yaml``)."""
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


def occ3d_tokens(root: Path, entries: Sequence[str]) -> list[str]:
    """Occ3D split entries -> frame tokens: split files under ``root`` (one token per line) or scene-name prefixes."""
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

        reader = SemanticKittiDataset(
            cfg.data.root, entries, grid_scale=grid_scale(cfg), with_labels=with_labels, pseudo_dir=cfg.data.pseudo_dir
        )
        if cfg.data.past_frames == 0:
            return reader
        from occle_core.data.multiframe import MultiFrameDataset

        return MultiFrameDataset(reader, int(cfg.data.past_frames), int(cfg.data.past_images))
    if cfg.data.dataset == "occ3d_nuscenes":
        from occle_core.data.occ3d import Occ3DDataset

        if cfg.data.past_frames or cfg.data.past_images:
            raise ValueError(
                "data.past_frames and data.past_images must be 0 for occ3d_nuscenes (multi-frame input: SemanticKITTI "
                "only)"
            )
        if grid_scale(cfg) != 1:
            raise ValueError("data.grid: the Occ3D reader serves the released 200x200x16 grid only")
        tokens = occ3d_tokens(Path(cfg.data.root), entries)
        if not tokens:
            raise ValueError(f"data.{split}_sequences {entries} select no Occ3D frame under {cfg.data.root}")
        return Occ3DDataset(cfg.data.root, tokens, grid=cfg.data.voxel_grid(), with_labels=with_labels)
    raise ValueError(f"data.dataset {cfg.data.dataset!r} has no reader")


class TrainFrames(Dataset):
    """Training view of a reader: the label budget as ``Sample.label_mask`` and per-frame seeded randomness.

    Args:
        base: a dataset of :class:`Sample`.
        ratio / label_seed / budget: the label budget (``data.label_ratio`` / ``label_seed`` / ``label_budget``).
        seed: ``train.seed``; any randomness of the reader for frame ``i`` in epoch ``e`` is seeded by
            ``(seed, e, i)`` so that a resumed run reads the same frames the same way.
        augment: ``data.height_shift`` and ``data.flip`` (:class:`~occle_core.data.augment.Augmentation`, drawn
            under the same seed after the label budget is chosen, so the budget does not depend on it); None = off.
        labelled_share: ``data.labelled_frame_share`` (``frame`` budget only): the share of each epoch's frames that
            are labelled frames (the labelled frames repeated to reach it, every unlabelled frame once; 1.0 = the
            labelled frames alone, the supervised-only baseline); None = every frame once. A served frame keeps
            its index in ``base`` for its seed and its budget.
    """

    def __init__(
        self,
        base: Dataset,
        ratio: float,
        label_seed: int,
        seed: int,
        budget: str = "voxel",
        augment: Augmentation | None = None,
        labelled_share: float | None = None,
    ) -> None:
        self.base = base
        self.augment = augment
        self.budget = budget
        self.ratio = float(ratio)
        self.label_seed = int(label_seed)
        self.seed = int(seed)
        self.epoch = 0
        self.frames = (  # indices into ``base``, in the order served
            np.arange(len(base)) if labelled_share is None
            else labelled_mix(len(base), ratio, label_seed, budget, labelled_share)
        )  # fmt: skip

    @classmethod
    def of(cls, base: Dataset, data: DataConfig, seed: int, augment: Augmentation | None = None) -> TrainFrames:
        """The training view of ``base`` under the budget of ``data`` (a ``DataConfig``) and ``augment`` (None:
        the augmentation of ``data`` too)."""
        return cls(
            base, data.label_ratio, data.label_seed, seed, data.label_budget,
            Augmentation.of(data) if augment is None else augment, data.labelled_frame_share,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.frames):
            raise IndexError(f"training frame {index} out of range for {len(self.frames)}")
        i = int(self.frames[index])  # the frame's index in ``base``
        with isolated_rng(seed_of(self.seed, self.epoch, i)):
            s: Sample = self.base[i]
            drawn = None if self.augment is None else self.augment.draw()
        if s.voxel_labels is None:
            raise ValueError(f"training frame {s.frame_id} has no voxel labels (voxels/*.label missing?)")
        s.label_mask = select_budget(
            self.budget, s.voxel_labels, self.ratio, self.label_seed, s.frame_id, s.invalid, (i, len(self.base))
        )
        return s if drawn is None else self.augment.apply(s, drawn)


def labelled_mix(n_frames: int, ratio: float, label_seed: int, budget: str, share: float) -> np.ndarray:
    """Indices of one epoch of a ``frame`` budget with labelled frames at ``share`` of it (see :class:`TrainFrames`).

    Raises:
        ValueError: ``budget`` is not ``frame``, ``share`` is not in (0, 1], or the budget labels no frame.
    """
    check_labelled_share(budget, share)
    labelled = select_labelled_frames(n_frames, ratio, label_seed)  # (n_frames,) bool
    lab, unl = np.flatnonzero(labelled), np.flatnonzero(~labelled)
    if len(lab) == 0:
        raise ValueError(f"the frame budget {ratio} labels none of the {n_frames} training frames")
    if share == 1 or len(unl) == 0:
        return lab
    count = max(len(lab), round(share / (1 - share) * len(unl)))  # labelled entries: share of the epoch
    return np.concatenate([np.resize(lab, count), unl])


#: readers of frames without voxel truth (label-free evaluation and adaptation)
LABEL_FREE_DATASETS = ("semantic_kitti", "kitti_raw", "kitti_object", "nuscenes")


def build_label_free(dataset: str, root: str | Path, selection: Sequence[str] | None = None) -> Dataset:
    """A reader of ``dataset`` frames that needs no voxel truth (front camera, scan, calibration; boxes when
    the release has them).

    Args:
        dataset: one of :data:`LABEL_FREE_DATASETS`.
        root: ``semantic_kitti``: the folder holding ``sequences/``; ``kitti_raw``: the folder holding the date
            folders; ``kitti_object``: the folder holding ``training`` / ``testing``, or one of those two;
            ``nuscenes``: the data root.
        selection: sequences (``semantic_kitti``, required), drives (``kitti_raw``), the split (``kitti_object``:
            ``training`` / ``testing``) or scenes / an official split name (``nuscenes``); None = everything.

    Raises:
        ValueError: an unknown dataset or a selection the reader refuses; FileNotFoundError: missing folders.
    """
    root = Path(root)
    if dataset == "semantic_kitti":
        from occle_core.data.semantic_kitti import SemanticKittiDataset

        if not selection:
            raise ValueError("semantic_kitti needs the sequences to read (e.g. --sequences 08)")
        return SemanticKittiDataset(root, list(selection), with_labels=False)
    if dataset == "kitti_raw":
        from occle_core.data.kitti import KittiRawDataset

        return KittiRawDataset(root, list(selection) if selection else None)
    if dataset == "kitti_object":
        from occle_core.data.kitti import KittiObjectDataset

        if root.name in ("training", "testing") and (root / "velodyne").is_dir():
            root, selection = root.parent, [root.name]
        if selection and len(selection) != 1:
            raise ValueError(f"kitti_object reads one split ('training' or 'testing'), got {list(selection)}")
        return KittiObjectDataset(root, selection[0] if selection else "training")
    if dataset == "nuscenes":
        from occle_core.data.nuscenes import NuScenesDataset

        split = None if not selection else selection[0] if len(selection) == 1 else list(selection)
        if isinstance(split, str) and split not in ("train", "val", "test", "mini_train", "mini_val"):
            split = [split]  # one scene name
        return NuScenesDataset(root, split=split, cameras=("CAM_FRONT",))  # extras["lidar_origin"]: the mount
    raise ValueError(f"dataset must be one of {list(LABEL_FREE_DATASETS)}, got {dataset!r}")
