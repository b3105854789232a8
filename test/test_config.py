"""Config validation lives in the config classes: one-line errors naming the field and what it expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from occle_core.config import OccleConfig, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "steps", 0, r"train\.steps must be an integer >= 1, got 0"),
        ("train", "lr", "1e-3", r"train\.lr must be a number, got '1e-3' \(YAML reads 1e-3 as text"),
        ("train", "lr", True, r"train\.lr must be a number, got True"),
        ("train", "schedule", "step", r"train\.schedule must be 'onecycle' or 'cosine', got 'step'"),
        ("train", "amp_dtype", "fp8", r"train\.amp_dtype must be 'auto', 'bf16' or 'fp16'"),
        ("train", "teacher", "mean", r"train\.teacher must be 'self' or 'ema'"),
        ("train", "ema_decay", 1.0, r"train\.ema_decay must be in \[0, 1\)"),
        ("train", "num_workers", -1, r"train\.num_workers must be >= 0"),
        ("loss", "lovasz", -0.5, r"loss\.lovasz must be >= 0 \(0 = off\), got -0\.5"),
        ("loss", "teacher_threshold", 1.5, r"loss\.teacher_threshold must be in \[0, 1\]"),
        ("data", "label_ratio", 1.5, r"data\.label_ratio must be in \[0, 1\], got 1\.5"),
        ("data", "max_points", "many", r"data\.max_points must be a number"),
    ],
)
def test_validate_names_the_bad_field(section, key, value, message):
    cfg = load_config(None, {section: {key: value}})  # loading does not judge values: validate() does
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_defaults_and_shipped_configs_are_valid():
    OccleConfig().validate()
    for name in ("train_synthetic_tiny", "train_semantic_kitti", "train_occ3d", "train_occ3d_tiny"):
        load_config(REPO / "config" / f"{name}.yaml").validate()


def test_resume_changes():
    a, b = OccleConfig(), OccleConfig()
    b.train.out_dir, b.data.root, b.train.log_every = "elsewhere", "/data", 3  # may change on resume
    b.data.image_size = list(b.data.image_size)  # a YAML list equals the tuple default
    assert a.resume_changes(b) == []
    b.train.seed, b.model.feat_dim = 7, 8
    assert a.resume_changes(b) == ["model.feat_dim=16->8", "train.seed=0->7"]
