"""Known-answer tests of the OccLE losses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from occle_core.config import LossConfig
from occle_core.losses import (
    balanced_bce,
    class_weights_from_counts,
    compute_losses,
    downsample_labels,
    geometry_loss,
    label_counts,
    lovasz_softmax,
    lovasz_softmax_flat,
    projection_loss,
    pseudo_label_ce,
    teacher_loss,
    teacher_targets,
    voxel_cross_entropy,
)

K = 4
SHAPE = (2, 6, 5, 3)  # (B, X, Y, Z)


def _labels(seed: int = 0, ignore_share: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, SHAPE, generator=g)
    y[torch.rand(SHAPE, generator=g) < ignore_share] = 255
    return y


def _logits(seed: int = 1, shape=SHAPE, k: int = K) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape[0], k, *shape[1:], generator=g)


def _iou_loss(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    losses = []
    for c in range(k):
        if not (y == c).any():
            continue
        inter = np.sum((pred == c) & (y == c))
        union = np.sum((pred == c) | (y == c))
        losses.append(1.0 - inter / union)
    return float(np.mean(losses))


def test_lovasz_equals_jaccard_loss_on_hard_predictions():
    # On one-hot probabilities the Lovasz extension equals the Jaccard loss of the discrete prediction.
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = rng.integers(0, K, 200)
        pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, K, 200))
        probs = torch.nn.functional.one_hot(torch.as_tensor(pred), K).double()
        got = float(lovasz_softmax_flat(probs, torch.as_tensor(y)))
        assert got == pytest.approx(_iou_loss(pred, y, K), abs=1e-12)


def test_lovasz_perfect_prediction_is_zero_and_wrong_is_large():
    y = _labels(ignore_share=0.0)
    perfect = torch.nn.functional.one_hot(y, K).movedim(-1, 1).float() * 50.0
    assert float(lovasz_softmax(perfect, y)) < 1e-6
    wrong = torch.nn.functional.one_hot((y + 1) % K, K).movedim(-1, 1).float() * 50.0
    assert float(lovasz_softmax(wrong, y)) == pytest.approx(1.0, abs=1e-6)


def test_lovasz_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(30, K, generator=g, dtype=torch.float64), -1).requires_grad_(True)
    y = torch.randint(0, K, (30,), generator=g)
    assert torch.autograd.gradcheck(lambda p: lovasz_softmax_flat(p, y), (probs,))


def test_masked_voxels_do_not_contribute_to_voxel_ce_or_lovasz():
    y = _labels()
    mask = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5)) < 0.3
    logits = _logits()
    ce0 = voxel_cross_entropy(logits, y, mask)
    lv0 = lovasz_softmax(logits, y, mask)
    outside = ~mask | (y == 255)
    changed = logits.clone()
    changed.movedim(1, -1)[outside] = torch.randn(int(outside.sum()), K) * 10
    y2 = y.clone()
    y2[~mask] = torch.randint(0, K, (int((~mask).sum()),))  # labels outside the budget are never read
    y2[~mask & (y == 255)] = 255
    assert torch.equal(voxel_cross_entropy(changed, y2, mask), ce0)
    assert torch.equal(lovasz_softmax(changed, y2, mask), lv0)
    # and a labelled voxel does matter
    inside = mask & (y != 255)
    changed.movedim(1, -1)[inside] += torch.randn(int(inside.sum()), K)
    assert not torch.equal(voxel_cross_entropy(changed, y2, mask), ce0)


def test_weighted_voxel_ce_known_answer():
    logits = _logits()
    y = _labels()
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    sel = y != 255
    x = logits.movedim(1, -1)[sel]
    t = y[sel]
    nll = -torch.log_softmax(x, -1).gather(1, t[:, None])[:, 0]
    expect = (w[t] * nll).sum() / w[t].sum()
    assert float(voxel_cross_entropy(logits, y, None, w)) == pytest.approx(float(expect), rel=1e-6)


def test_voxel_ce_with_nothing_labelled_is_zero_with_gradient():
    logits = _logits().requires_grad_(True)
    y = torch.full(SHAPE, 255)
    loss = voxel_cross_entropy(logits, y)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_class_weights_from_counts():
    w = class_weights_from_counts([600_000, 1_000, 0])
    raw = np.array([1 / math.log(600_000.001), 1 / math.log(1_000.001), 1 / math.log(math.e + 0.001)])
    np.testing.assert_allclose(w.numpy(), raw / raw.mean(), rtol=1e-6)
    assert w[2] > w[1] > w[0]
    assert 1.5 < float(w[1] / w[0]) < 2.5  # mild: log counts, not inverse frequency
    with pytest.raises(ValueError, match="non-negative"):
        class_weights_from_counts([1, -1])


def test_label_counts():
    y = torch.tensor([[0, 1, 1, 255], [3, 3, 3, 0]])
    m = torch.tensor([[True, True, False, True], [True, True, True, False]])
    assert label_counts(y, m, 4).tolist() == [1, 1, 0, 3]
    assert label_counts(y, None, 4).tolist() == [2, 2, 0, 3]


def test_pseudo_label_ce_ignores_255():
    logits = _logits(shape=(2, 5, 7), k=K)  # (B, K, H, W)
    t = torch.randint(0, K, (2, 5, 7))
    t[:, :2] = 255
    full = torch.nn.functional.cross_entropy(logits[:, :, 2:], t[:, 2:])
    assert float(pseudo_label_ce(logits, t)) == pytest.approx(float(full), rel=1e-6)
    assert float(pseudo_label_ce(logits, torch.full_like(t, 255))) == 0.0
    with pytest.raises(ValueError, match="expected"):
        pseudo_label_ce(logits, t[:, :3])


def test_balanced_bce_and_geometry_targets():
    logit = torch.zeros(10)
    t = torch.tensor([1.0] + [0.0] * 9)
    assert float(balanced_bce(logit, t, torch.ones(10, dtype=torch.bool))) == pytest.approx(math.log(2))
    # positives and negatives weigh the same however many of each there are
    logit = torch.tensor([2.0] + [-1.0] * 9)
    got = float(balanced_bce(logit, t, torch.ones(10, dtype=torch.bool)))
    expect = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert got == pytest.approx(expect, rel=1e-6)

    geo = torch.full((1, 1, 4, 1, 1), 3.0)  # strongly "occupied" everywhere
    occupied = torch.tensor([True, False, False, False]).view(1, 4, 1, 1)
    free = torch.tensor([False, True, False, False]).view(1, 4, 1, 1)
    loss_lidar = float(geometry_loss(geo, occupied, free))
    assert loss_lidar == pytest.approx(0.5 * (math.log1p(math.exp(-3)) + math.log1p(math.exp(3))), rel=1e-6)
    # a labelled voxel overrides the LiDAR target: voxel 0 labelled empty -> only negatives remain
    labels = torch.tensor([0, 255, 255, 255]).view(1, 4, 1, 1)
    mask = torch.tensor([True, False, False, False]).view(1, 4, 1, 1)
    assert float(geometry_loss(geo, occupied, free, labels, mask)) == pytest.approx(math.log1p(math.exp(3)), rel=1e-6)
    # voxels with no target (index 2, 3) never count
    geo2 = geo.clone()
    geo2[0, 0, 2:] = -50.0
    assert float(geometry_loss(geo2, occupied, free)) == loss_lidar


def test_teacher_uses_only_confident_unlabelled_voxels():
    logits = torch.zeros(1, 3, 4, 1, 1)
    logits[0, 1, 0] = 10.0  # confident class 1, unlabelled -> used
    logits[0, 2, 1] = 10.0  # confident but labelled -> not used
    logits[0, 0, 2] = 0.5  # not confident -> not used
    logits[0, 0, 3] = 10.0  # confident but invalid (label 255) -> not used
    mask = torch.tensor([False, True, False, False]).view(1, 4, 1, 1)
    labels = torch.tensor([1, 2, 0, 255]).view(1, 4, 1, 1)
    target, keep = teacher_targets(logits, 0.9, mask, labels)
    assert keep.view(-1).tolist() == [True, False, False, False]
    assert int(target.view(-1)[0]) == 1
    student = torch.zeros(1, 3, 4, 1, 1)
    geo = torch.zeros(1, 1, 4, 1, 1)
    loss = float(teacher_loss(student, geo, logits, 0.9, mask, labels, empty_index=0))
    assert loss == pytest.approx(math.log(3) + math.log(2), rel=1e-6)  # CE of uniform + BCE(0 | occupied)
    # every valid voxel labelled (no budget mask): nothing left for the teacher
    _, keep_all = teacher_targets(logits, 0.9, None, labels)
    assert not bool(keep_all.any())
    assert float(teacher_loss(student, geo, logits, 0.99999, mask, labels)) == 0.0


def test_downsample_labels_majority():
    lab = torch.tensor(
        [
            [
                [1, 1, 2, 255, 9],
                [1, 3, 255, 255, 9],
                [0, 0, 0, 0, 9],
            ]
        ]
    )
    out = downsample_labels(lab, 2, num_classes=4)  # 9 is out of range -> treated as ignore
    assert out.tolist() == [[[1, 255]]]
    assert torch.equal(downsample_labels(lab, 1, 4), lab)
    tie = torch.tensor([[[2, 2], [255, 255]]])
    assert downsample_labels(tie, 2, 4).tolist() == [[[2]]]  # ties go to the lower index, a class before 255


def test_projection_loss_known_answers():
    b, k, hp, wp, s = 1, 3, 2, 3, 2
    target = torch.tensor([[0, 1, 2], [2, 255, 1]])
    pseudo = target.repeat_interleave(s, 0).repeat_interleave(s, 1)[None]  # (1, 4, 6)
    weight = torch.full((b, 1, hp, wp), 2.0)
    perfect = torch.nn.functional.one_hot(target.clamp(max=k - 1), k).permute(2, 0, 1)[None].float() * 2.0
    assert float(projection_loss(perfect, weight, pseudo, s)) < 1e-5
    uniform = torch.full((b, k, hp, wp), 2.0 / k)
    assert float(projection_loss(uniform, weight, pseudo, s)) == pytest.approx(math.log(k), rel=1e-6)
    # pixels where nothing projects (weight 0) are left out
    weight0 = weight.clone()
    weight0[..., 0, :] = 0.0
    mixed = uniform.clone()
    mixed[..., 0, :] = 0.0
    assert float(projection_loss(mixed, weight0, pseudo, s)) == pytest.approx(math.log(k), rel=1e-6)
    with pytest.raises(ValueError, match="proj_stride"):
        projection_loss(uniform, weight, pseudo, 3)


def _fake(requires_grad: bool = True):
    g = torch.Generator().manual_seed(0)
    b, x, y, z, h, w, s = 1, 4, 4, 2, 8, 12, 2
    t = lambda *sh: torch.randn(*sh, generator=g).requires_grad_(requires_grad)  # noqa: E731
    out = SimpleNamespace(
        logits=t(b, K, x, y, z),
        sem2d=t(b, K, h, w),
        sem3d=t(b, K, x, y, z),
        geo=t(b, 1, x, y, z),
        proj=torch.rand(b, K, h // s, w // s, generator=g),
        proj_weight=torch.ones(b, 1, h // s, w // s),
        proj_stride=s,
    )
    labels = torch.randint(0, K, (b, x, y, z), generator=g)
    batch = SimpleNamespace(
        voxel_labels=labels,
        label_mask=torch.rand(b, x, y, z, generator=g) < 0.5,
        pseudo2d=torch.randint(0, K, (b, h, w), generator=g),
        pseudo3d=torch.randint(0, K, (b, x, y, z), generator=g),
        occupied=labels > 0,
        free=labels == 0,
    )
    return out, batch


def test_compute_losses_weights_and_switches():
    out, batch = _fake()
    cfg = LossConfig(teacher_threshold=0.0)  # every unlabelled voxel confident: the teacher term is non-zero
    total, terms = compute_losses(out, batch, cfg)
    assert set(terms) == {
        "voxel_ce", "lovasz", "pseudo_2d", "pseudo_3d", "geometry", "teacher", "projection", "unobserved_prior",
    }  # fmt: skip
    expect = sum(getattr(cfg, name) * float(v) for name, v in terms.items())
    assert float(total) == pytest.approx(expect, rel=1e-6)
    total.backward()
    assert out.sem3d.grad is not None and out.sem2d.grad is not None and out.geo.grad is not None

    off = LossConfig(pseudo_2d=0.0, projection=0.0, lovasz=0.0, teacher=0.0, unobserved_prior=0.0)
    total2, terms2 = compute_losses(out, batch, off)
    assert set(terms2) == {"voxel_ce", "pseudo_3d", "geometry"}
    # missing inputs skip their terms (no semantic branch, no image head)
    out.sem3d = None
    out.sem2d = None
    _, terms3 = compute_losses(out, batch, LossConfig())
    assert "pseudo_3d" not in terms3 and "pseudo_2d" not in terms3


def test_pseudo_voxel_puts_the_lifted_labels_on_the_final_logits():
    out, batch = _fake()
    cfg = LossConfig(**{name: 2.0 if name == "pseudo_voxel" else 0.0 for name in LossConfig.WEIGHTS})
    total, terms = compute_losses(out, batch, cfg)
    assert set(terms) == {"pseudo_voxel"}
    assert float(terms["pseudo_voxel"]) == pytest.approx(float(pseudo_label_ce(out.logits, batch.pseudo3d)))
    assert float(total) == pytest.approx(2.0 * float(terms["pseudo_voxel"]))
    total.backward()
    assert out.logits.grad is not None and out.sem3d.grad is None  # the final logits, not the semantic branch
    batch.pseudo3d = None
    assert compute_losses(out, batch, cfg)[1] == {}


def test_compute_losses_class_weights_passed_in_are_used():
    out, batch = _fake(requires_grad=False)
    cfg = LossConfig(lovasz=0, pseudo_2d=0, pseudo_3d=0, geometry=0, teacher=0, projection=0)
    w = torch.tensor([1.0, 100.0, 1.0, 1.0])
    _, a = compute_losses(out, batch, cfg, class_weights=w)
    _, b = compute_losses(out, batch, LossConfig(**{**cfg.__dict__, "class_weighted": False}))
    expect = voxel_cross_entropy(out.logits, batch.voxel_labels, batch.label_mask, w)
    assert float(a["voxel_ce"]) == pytest.approx(float(expect))
    assert float(a["voxel_ce"]) != pytest.approx(float(b["voxel_ce"]))
