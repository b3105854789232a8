"""Hugging Face pseudo labellers on tiny randomly initialised local models (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from occle_core.device import resolve_device  # noqa: E402
from occle_core.pseudo.align import AlignedLabeller, load_label_map  # noqa: E402
from occle_core.pseudo.hf_adapter import HFCLIPSegSegmenter, HFSegmenterLabeller  # noqa: E402

CITYSCAPES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    """A tiny Segformer with the Cityscapes class names, saved with its image processor."""
    torch.manual_seed(0)
    cfg = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=19,
        id2label=dict(enumerate(CITYSCAPES)),
        label2id={n: i for i, n in enumerate(CITYSCAPES)},
    )
    model = transformers.SegformerForSemanticSegmentation(cfg)
    with torch.no_grad():  # a strong, spatially varying decoder output so that many classes appear
        model.decode_head.classifier.weight.mul_(50.0)
    d = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(d)
    transformers.SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory):
    """A tiny CLIPSeg with a character-level tokenizer, saved with its processor."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clipseg")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    ip = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transformers.CLIPSegProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    cfg = transformers.CLIPSegConfig(
        text_config=dict(
            vocab_size=54,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=40,
            bos_token_id=52,
            eos_token_id=53,
            pad_token_id=53,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
        reduce_dim=8,
        extract_layers=[1],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    transformers.CLIPSegForImageSegmentation(cfg).save_pretrained(d)
    return d


def _image(h: int = 40, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_segformer_labeller_maps_model_classes_to_targets(segformer_dir):
    lm = load_label_map("cityscapes", "semantic_kitti")
    lab = HFSegmenterLabeller(segformer_dir, lm, device="cpu")
    assert lab.source_names == CITYSCAPES and lab.unmapped == []
    image = _image()
    out = lab.label(image, "00/000000")
    assert out.shape == (40, 56) and out.dtype == np.uint8
    # the reference: model logits upsampled to the image, argmax, then the Cityscapes -> SemanticKITTI table
    inputs = lab.processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = lab.model(**inputs).logits  # (1, 19, 16, 16)
    up = torch.nn.functional.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)
    src = up.argmax(1)[0].numpy()
    np.testing.assert_array_equal(lab.predict_source(image), src)
    np.testing.assert_array_equal(out, lm.lut()[src])
    assert len(np.unique(src)) >= 3  # the check above covers several classes, not a constant map
    sky, rider = CITYSCAPES.index("sky"), CITYSCAPES.index("rider")
    assert (out[(src == sky) | (src == rider)] == 255).all()


def test_clipseg_open_vocab_and_aligned_labeller(clipseg_dir, segformer_dir):
    lm = load_label_map("cityscapes", "semantic_kitti")
    seg = HFCLIPSegSegmenter(clipseg_dir, device="cpu", mask_threshold=0.5)
    image = _image()
    res = seg.segment(image, lm.open_vocab)
    M = len(lm.open_vocab)
    assert res.masks.shape == (M, 40, 56) and res.scores.shape == (M, 40, 56)
    assert list(res.classes) == list(lm.open_vocab)
    assert ((res.scores >= 0) & (res.scores <= 1)).all()
    np.testing.assert_array_equal(res.masks, res.scores >= 0.5)
    # a class's score is the best of its prompts: equal to the max over single-prompt queries
    trunk = lm.classes.names.index("trunk")
    two = {trunk: ["tree trunk", "bark"]}
    both = seg.segment(image, two).scores[0]
    singles = [seg.segment(image, {trunk: [p]}).scores[0] for p in two[trunk]]
    np.testing.assert_allclose(both, np.maximum(*singles), atol=1e-5)
    assert seg.segment(image, {}).masks.shape == (0, 40, 56)
    # the whole OccLE labeller: specific Segformer labels aligned with the CLIPSeg masks
    specific = HFSegmenterLabeller(segformer_dir, lm, device="cpu")
    aligned = AlignedLabeller(specific, seg, lm, min_score=0.5)
    out = aligned.label(image, "00/000000")
    spec = specific.label(image)
    assert out.shape == spec.shape and out.dtype == np.uint8
    changed = out != spec
    assert np.isin(out[changed], list(lm.open_vocab)).all()  # only open-vocabulary classes were written


def test_errors_are_clear(tmp_path, segformer_dir):
    lm = load_label_map("cityscapes", "semantic_kitti")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        HFSegmenterLabeller(tmp_path, lm, device="cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    lab = HFSegmenterLabeller(segformer_dir, lm, device="auto")
    with pytest.raises(ValueError, match="image must be"):
        lab.label(np.zeros((8, 8), np.uint8))
