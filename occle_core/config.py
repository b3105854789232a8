"""Dataclass configs, loaded from YAML: dataset/grid, model size, losses and training.

A YAML file may set any subset of the fields; the rest keep their defaults. ``model.size`` picks a preset
(``tiny`` for CPU tests and the demo, ``paper`` for the published scale on a GPU) whose values individual
keys can still override. Unknown keys are an error that names the key.

Values are checked by the classes themselves: :meth:`OccleConfig.validate` (each section's ``validate``) raises a
``ValueError`` naming the first bad field and what it expects; :meth:`OccleConfig.resume_changes` lists the
fields a resumed training run may not change.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occle_core.data.label_budget import LABEL_BUDGETS, check_labelled_share
from occle_core.data.sample import GRID_FRAMES, is_past_view, past_view_names
from occle_core.geometry import VoxelGrid
from occle_core.labels import DATASETS, ClassTable, class_table


@dataclass
class DataConfig:
    """Dataset and input geometry.

    Attributes:
        dataset: class table / reader (``semantic_kitti`` or ``occ3d_nuscenes``).
        root: dataset root (SemanticKITTI: the folder holding ``sequences/``).
        grid: output voxel grid; ``None`` takes the dataset's standard grid.
        image_size: (H, W) the network sees; images and calibration are resized to it.
        train_sequences / val_sequences: sequence ids of each split.
        max_points: points kept per scan (random subset beyond it), bounds memory.
        label_ratio: share of valid labelled voxels kept for supervision (OccLE: 0.1).
        label_seed: seed of the label-budget sampling.
        label_budget: how the share is drawn: ``voxel`` (random voxels of every frame, OccLE's setting),
            ``frame`` (whole frames labelled) or ``block`` (random voxel blocks); see ``data/label_budget.py``.
        cameras: the camera set the network sees, channel names with the front camera first (every camera is
            resized to ``image_size``); None takes the dataset's rig (:meth:`camera_names`).
        grid_frame: ``"lidar"`` or ``"ego"``, the frame of the grid, the points and every ``T_cam<-grid``; None
            takes the dataset's frame (:meth:`frame`).
        pseudo_dir: SemanticKITTI layout: the sequence sub-folder the 2D pseudo labels are read from
            (``pseudo_2d``: occle-synth's noise model; e.g. ``pseudo_2d_deeplab`` written by occle-pseudo).
        past_frames: SemanticKITTI layout: K previous scans of the sequence merged into each frame's points
            through the poses, with a time-offset column (``data/multiframe.py``) that the network reads when
            ``model.time_features`` is set (its default for K > 0); 0 = the frame's own scan only.
        past_images: SemanticKITTI layout: M <= ``past_frames`` previous images of the front camera as extra views
            ``<camera>@-1`` .. ``<camera>@-M`` whose calibration maps the current frame to the past image through
            the poses (``data/multiframe.py``); :meth:`camera_names` appends them to the camera set. 0 = none.
        height_shift: training augmentation: each training frame moved up or down by a whole number of voxel
            layers drawn from ``-n .. n`` per frame and epoch (``data/augment.py``), so that the network does not
            tie the road to one layer of the grid; 0 = off (the default).
        flip: training augmentation: the share of training frames mirrored left to right about the grid's centre
            line, images flipped with them (``data/augment.py``, exact); 0 = off (the default), 0.5 = half.
        labelled_frame_share: with ``label_budget: frame``, the share of each epoch's frames that are labelled
            (labelled frames repeated to reach it: the labelled / unlabelled balance of semi-supervised training;
            1.0 = the labelled frames alone, the supervised-only baseline); None = every frame once (the default).
    """

    dataset: str = "semantic_kitti"
    root: str = ""
    grid: dict | None = None
    image_size: tuple[int, int] = (188, 620)
    train_sequences: list[str] = field(default_factory=lambda: ["00"])
    val_sequences: list[str] = field(default_factory=lambda: ["08"])
    max_points: int = 160_000
    label_ratio: float = 0.1
    label_seed: int = 0
    label_budget: str = "voxel"
    cameras: list[str] | None = None
    grid_frame: str | None = None
    pseudo_dir: str = "pseudo_2d"
    past_frames: int = 0
    past_images: int = 0
    height_shift: int = 0
    flip: float = 0.0
    labelled_frame_share: float | None = None

    def camera_names(self) -> list[str]:
        """The camera set: ``cameras`` when set, else the dataset's (SemanticKITTI ``["image_2"]``, Occ3D-nuScenes
        the six ``CAM_*`` channels, front first); with ``past_images`` M > 0 followed by the front camera's past
        views ``<front>@-1`` .. ``<front>@-M`` (once: a list that already ends with them, as a checkpoint's camera
        set does, gives the same set)."""
        if self.cameras is not None:
            names = list(self.cameras)
        elif self.dataset == "occ3d_nuscenes":
            from occle_core.data.nuscenes import CAMERAS

            names = list(CAMERAS)
        else:
            names = ["image_2"]
        if not self.past_images:
            return names
        current = [n for n in names if not is_past_view(n)]
        return current + past_view_names(current[0], self.past_images)

    def frame(self) -> str:
        """The grid frame: ``grid_frame`` when set, else the dataset's (SemanticKITTI ``lidar``, Occ3D ``ego``)."""
        if self.grid_frame is not None:
            return self.grid_frame
        return "ego" if self.dataset == "occ3d_nuscenes" else "lidar"

    def voxel_grid(self) -> VoxelGrid:
        """The output grid: ``grid`` when set, else the dataset's standard grid."""
        if self.grid is not None:
            return VoxelGrid.from_dict(self.grid)
        from occle_core.resources import config_path

        with open(config_path(DATASETS[self.dataset])) as f:
            return VoxelGrid.from_dict(yaml.safe_load(f)["grid"])

    def classes(self) -> ClassTable:
        """The dataset's class table."""
        return class_table(self.dataset)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad training-relevant ``data`` value."""
        _require_numbers(self, "data", ("label_ratio", "label_seed", "max_points", "past_frames", "past_images"))
        current = [n for n in self.cameras or [] if not is_past_view(n)]
        listed = [n for n in self.cameras or [] if is_past_view(n)]  # past views named in data.cameras
        past = past_view_names(current[0], self.past_images) if current else []  # what camera_names() appends
        _require(
            [
                (0 <= self.label_ratio <= 1, "data.label_ratio", "in [0, 1]", self.label_ratio),
                (
                    self.past_frames >= 0 and int(self.past_frames) == self.past_frames,
                    "data.past_frames",
                    "an integer >= 0",
                    self.past_frames,
                ),
                (
                    0 <= self.past_images <= self.past_frames and int(self.past_images) == self.past_images,
                    "data.past_images",
                    f"an integer in [0, data.past_frames = {self.past_frames}] (each past image comes with its scan)",
                    self.past_images,
                ),
                (
                    self.past_images == 0 or self.dataset == "semantic_kitti",
                    "data.past_images",
                    "0 for datasets other than semantic_kitti (past views: SemanticKITTI layout only)",
                    self.past_images,
                ),
                (
                    self.cameras is None or (bool(current) and listed in ([], past)),
                    "data.cameras",
                    f"current camera names, optionally followed by the past views of data.past_images = "
                    f"{self.past_images}: {past}",
                    self.cameras,
                ),
                (
                    isinstance(self.pseudo_dir, str) and Path(self.pseudo_dir).name == self.pseudo_dir,
                    "data.pseudo_dir",
                    "a folder name inside each sequence",
                    self.pseudo_dir,
                ),
            ]
        )


@dataclass
class ModelConfig:
    """Network widths and switches. ``size`` selects a preset from :data:`MODEL_PRESETS`."""

    size: str = "tiny"
    image_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    feat_dim: int = 16
    lidar_channels: list[int] = field(default_factory=lambda: [8, 16, 32])
    lidar_backend: str = "auto"  # auto | spconv | dense
    scan_backend: str = "auto"  # auto | mamba_ssm | torch (selective scan of the Dual Mamba)
    mamba_dim: int = 32
    mamba_layers: int = 1
    mamba_state: int = 8
    token_stride: int = 8  # voxel grid downsampling before the Dual Mamba token sequence
    feature_stride: int = 2  # 3D feature grids run at the output grid / feature_stride (heads upsample)
    proj_stride: int = 4  # scatter-accumulated projection maps at the image size / proj_stride
    use_semantic_branch: bool = True
    use_dual_mamba: bool = True  # False: plain conv fusion (ablation)
    use_image: bool = True  # False: LiDAR-only baseline
    pretrained_image: str = ""  # local path of backbone weights; nothing is downloaded
    shared_encoders: bool = True  # False: the semantic branch has its own 2D UNet and sparse 3D UNet (the paper)
    sem3d_head: str = "coarse"  # coarse: sem3d at the feature resolution, upsampled | full: one per output voxel
    # multi-frame input: voxel features carry the current-scan share and the mean point age (model/lidar_encoder.py);
    # None (the default) resolves to data.past_frames > 0 when the OccleConfig is built; false with past scans merged
    # in is the ablation that ignores the time column; true needs data.past_frames > 0
    time_features: bool | None = None
    # the logits head also reads which output voxels hold a return (model/occle.py, lidar_encoder.hit_bits); a
    # checkpoint trained without it loads with that input's weights at zero
    hit_skip: bool = False
    # the class decision only (OccLE.predict_labels, not the logits): a voxel whose centre lies more than this many
    # metres above the ground plane fitted to its frame's scan (and above the returns beside it), or on the lower
    # flank of an object standing on it, takes no ground class (road, sidewalk, terrain...; model/ground_gate.py);
    # 0 = off. Where the ground is not one plane (hills, ramps, multi-level car parks) keep it off or generous
    ground_gate: float = 0.0


# what a saved config written before a model switch existed meant by its absence (the network it was trained as)
LEGACY_MODEL = {"shared_encoders": True, "sem3d_head": "coarse", "time_features": False, "hit_skip": False}
DECOUPLED = {"shared_encoders": False, "sem3d_head": "full"}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "tiny_decoupled": dict(DECOUPLED),  # tiny widths, the published decoupled encoders (CPU comparison)
    "paper": {
        **DECOUPLED,
        "image_channels": [64, 128, 256, 512],
        "feat_dim": 64,
        "lidar_channels": [32, 64, 128],
        "mamba_dim": 128,
        "mamba_layers": 2,
        "mamba_state": 16,
        "token_stride": 4,
    },
}


@dataclass
class LossConfig:
    """Loss weights; a weight of 0 switches that term off (ablations)."""

    voxel_ce: float = 1.0
    lovasz: float = 1.0
    pseudo_2d: float = 0.5
    pseudo_3d: float = 0.5
    geometry: float = 1.0
    teacher: float = 0.5
    projection: float = 0.5
    free_space: float = 0.0  # LiDAR hits / crossed voxels on the final logits (label-free adaptation)
    ground: float = 0.0  # voxels of LiDAR ground returns on the final logits: a ground class (label-free adaptation)
    # the lifted 3D pseudo labels (pseudo_3d's targets) on the final logits too, not only on the semantic branch's
    # sem3d: without voxel labels the only per-voxel class target the class decision gets (label-free adaptation)
    pseudo_voxel: float = 0.0
    # never-observed voxels toward the observed occupied share (losses.py); 1.0 measured on synthetic frames:
    # 120 fine-tuning steps took the predicted occupied share from 12x the truth's to 2.7x, IoU 35 -> 47 (docs)
    unobserved_prior: float = 1.0
    teacher_threshold: float = 0.9
    class_weighted: bool = True

    WEIGHTS = (
        "voxel_ce", "lovasz", "pseudo_2d", "pseudo_3d", "geometry", "teacher", "projection", "free_space",
        "ground", "pseudo_voxel", "unobserved_prior",
    )  # fmt: skip

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad ``loss`` value."""
        _require_numbers(self, "loss", self.WEIGHTS)
        checks = [(0 <= self.teacher_threshold <= 1, "loss.teacher_threshold", "in [0, 1]", self.teacher_threshold)]
        checks += [(getattr(self, n) >= 0, f"loss.{n}", ">= 0 (0 = off)", getattr(self, n)) for n in self.WEIGHTS]
        _require(checks)


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 2e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"  # onecycle | cosine
    grad_clip: float = 5.0
    amp: bool = True  # used on CUDA only
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    ckpt_every: int = 100
    out_dir: str = "runs/occle"
    warmup: float = 0.1  # share of the steps spent warming up (onecycle pct_start / cosine linear warm-up)
    amp_dtype: str = "auto"  # auto (bf16 where supported, else fp16 + GradScaler) | bf16 | fp16
    teacher: str = "self"  # self: own detached predictions | ema: EMA copy of the model (one more forward)
    ema_decay: float = 0.999
    eval_frames: int = 0  # val frames evaluated during training (0 = the whole split)
    class_weight_frames: int = 64  # training frames whose labelled voxels give the class weights

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad ``train`` value."""
        _require_numbers(
            self, "train", ("steps", "batch_size", "lr", "weight_decay", "grad_clip", "ema_decay", "warmup", "seed")
        )
        _require(
            [
                (self.steps >= 1, "train.steps", "an integer >= 1", self.steps),
                (self.batch_size >= 1, "train.batch_size", "an integer >= 1", self.batch_size),
                (self.lr > 0, "train.lr", "> 0", self.lr),
                (self.weight_decay >= 0, "train.weight_decay", ">= 0", self.weight_decay),
                (self.grad_clip >= 0, "train.grad_clip", ">= 0 (0 = off)", self.grad_clip),
                (self.schedule in ("onecycle", "cosine"), "train.schedule", "'onecycle' or 'cosine'", self.schedule),
                (
                    self.amp_dtype in ("auto", "bf16", "fp16"),
                    "train.amp_dtype",
                    "'auto', 'bf16' or 'fp16'",
                    self.amp_dtype,
                ),
                (self.teacher in ("self", "ema"), "train.teacher", "'self' or 'ema'", self.teacher),
                (0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1)", self.ema_decay),
                (0 <= self.warmup < 1, "train.warmup", "in [0, 1)", self.warmup),
                (self.log_every >= 1, "train.log_every", ">= 1", self.log_every),
                (self.ckpt_every >= 0, "train.ckpt_every", ">= 0 (0 = only at the end)", self.ckpt_every),
                (self.eval_every >= 0, "train.eval_every", ">= 0 (0 = only at the end)", self.eval_every),
                (self.num_workers >= 0, "train.num_workers", ">= 0", self.num_workers),
            ]
        )


# config fields a resumed run may change: where things live and how often it logs; the rest must match
RESUMABLE_CHANGES = frozenset(
    {
        "data.root",
        "train.out_dir",
        "train.num_workers",
        "train.log_every",
        "train.eval_every",
        "train.eval_frames",
        "train.ckpt_every",
    }
)


@dataclass
class OccleConfig:
    """The whole configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.time_features is None:  # multi-frame input carries its time offsets into the network
            past = self.data.past_frames
            self.model.time_features = isinstance(past, int | float) and not isinstance(past, bool) and past > 0

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check the values training reads (``train``, ``loss``, ``data``, ``model.time_features`` against
        ``data.past_frames``); ``ValueError`` names the first bad one."""
        self.train.validate()
        self.loss.validate()
        self.data.validate()
        tf = self.model.time_features
        _require(
            [
                (isinstance(tf, bool), "model.time_features", "true or false (null resolves when loaded)", tf),
                (
                    not tf or self.data.past_frames > 0,
                    "model.time_features",
                    "false when data.past_frames is 0 (one scan has no time offsets)",
                    tf,
                ),
            ]
        )

    def resume_changes(self, new: OccleConfig) -> list[str]:
        """``section.key=old->new`` for every field of ``new`` that differs from this (saved) config and may not
        change on resume (anything outside :data:`RESUMABLE_CHANGES`)."""
        a, b = self.to_dict(), new.to_dict()
        out = []
        for section, values in a.items():
            for key, old in values.items():
                name = f"{section}.{key}"
                now = b[section][key]
                if name not in RESUMABLE_CHANGES and _plain(old) != _plain(now):
                    out.append(f"{name}={old!r}->{now!r}")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> OccleConfig:
        """Build from a nested dict; unknown sections or keys raise ``ValueError`` naming them."""
        d = dict(d or {})
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        model_d = dict(d.get("model") or {})
        size = model_d.get("size", ModelConfig.size)
        if size not in MODEL_PRESETS:
            raise ValueError(f"model.size must be one of {sorted(MODEL_PRESETS)}, got {size!r}")
        model_d = {**MODEL_PRESETS[size], **model_d}
        return cls(
            data=_build(DataConfig, d.get("data"), "data"),
            model=_build(ModelConfig, model_d, "model"),
            loss=_build(LossConfig, d.get("loss"), "loss"),
            train=_build(TrainConfig, d.get("train"), "train"),
        )

    @classmethod
    def from_saved(cls, d: dict) -> OccleConfig:
        """:meth:`from_dict` for a config saved in a checkpoint: a model key it lacks predates that switch and takes
        its :data:`LEGACY_MODEL` value (the network the weights were trained as), not the preset's."""
        d = dict(d or {})
        d["model"] = {**LEGACY_MODEL, **(d.get("model") or {})}
        return cls.from_dict(d)


def _plain(value: Any) -> Any:
    """Tuples as lists (a YAML list and a tuple default compare equal)."""
    return list(value) if isinstance(value, tuple) else value


def _require_numbers(obj: Any, section: str, names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` when a field of ``names`` is not an int or float (bool excluded)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int | float):
            yaml_float = isinstance(v, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", v.strip())
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if yaml_float else ""
            raise ValueError(f"{section}.{name} must be a number, got {v!r}{hint}")


def _require(checks: list[tuple[bool, str, str, Any]]) -> None:
    """Raise ``ValueError("<field> must be <expected>, got <value>")`` for the first failed check."""
    for ok, field_name, expected, got in checks:
        if not ok:
            raise ValueError(f"{field_name} must be {expected}, got {got!r}")


def _build(kind: type, values: dict | None, section: str) -> Any:
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config section {section!r}; expected {sorted(names)}")
    obj = kind(**values)
    if isinstance(obj, DataConfig):
        if obj.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {sorted(DATASETS)}, got {obj.dataset!r}")
        if obj.label_budget not in LABEL_BUDGETS:
            raise ValueError(f"data.label_budget must be one of {list(LABEL_BUDGETS)}, got {obj.label_budget!r}")
        obj.image_size = tuple(int(v) for v in obj.image_size)
        check_labelled_share(obj.label_budget, obj.labelled_frame_share)
        if int(obj.height_shift) != obj.height_shift or obj.height_shift < 0:
            raise ValueError(f"data.height_shift must be a whole number of layers >= 0, got {obj.height_shift!r}")
        if isinstance(obj.flip, bool) or not isinstance(obj.flip, int | float) or not 0 <= obj.flip <= 1:
            raise ValueError(f"data.flip must be a share of frames in [0, 1], got {obj.flip!r}")
        if obj.grid_frame is not None and obj.grid_frame not in GRID_FRAMES:
            raise ValueError(f"data.grid_frame must be one of {list(GRID_FRAMES)} or null, got {obj.grid_frame!r}")
        if obj.cameras is not None:
            names = [str(c) for c in obj.cameras] if isinstance(obj.cameras, list | tuple) else []
            if not names or len(set(names)) != len(names):
                raise ValueError(f"data.cameras must be a list of distinct camera names or null, got {obj.cameras!r}")
            obj.cameras = names
    return obj


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> OccleConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply nested ``overrides``."""
    doc: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
    for section, values in (overrides or {}).items():
        doc.setdefault(section, {}).update(values)
    return OccleConfig.from_dict(doc)
