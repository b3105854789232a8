"""The TFLite 2D segmenter: tiling and stitching, preprocessing, class maps, the CLI, and a known-answer test on
the real Cityscapes DeepLab's reference image (skipped without ``../shared`` or ``ai-edge-litert``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occle_core.labels import class_table
from occle_core.pseudo.align import load_label_map
from occle_core.pseudo.cli import dataset_images, main
from occle_core.pseudo.tflite_segmenter import (
    TFLiteSegmenter,
    class_shares,
    load_interpreter,
    resize_labels,
    tile_bounds,
    tile_starts,
)

MODEL_DIR = Path(__file__).resolve().parents[1] / "../shared/models/deeplab_cityscapes"
MODEL = MODEL_DIR / "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
#: pixel agreement of the model with its publisher's reference mask (measured 0.921: the mask comes from another
#: build of the model, e.g. the EdgeTPU compilation, so it is not bit-exact)
REFERENCE_AGREEMENT = 0.90
CITYSCAPES = load_label_map("cityscapes", "semantic_kitti").source_names


class MockInterpreter:
    """A fixed-size segmenter: answers ``fn(input)`` (an (h, w) class map) for every tile, records the inputs."""

    def __init__(self, size=(8, 8), fn=None, dtype=np.uint8, quantization=(1 / 128, 128)):
        self.size, self.fn, self.dtype, self.quantization = size, fn, dtype, quantization
        self.inputs: list[np.ndarray] = []

    def get_input_details(self):
        return [
            {"index": 0, "shape": np.array([1, *self.size, 3]), "dtype": self.dtype, "quantization": self.quantization}
        ]

    def get_output_details(self):
        return [{"index": 1, "shape": np.array([1, *self.size]), "dtype": np.int64, "quantization": (0.0, 0)}]

    def set_tensor(self, index, value):
        assert index == 0 and value.shape == (1, *self.size, 3) and value.dtype == self.dtype
        self.inputs.append(value[0].copy())

    def invoke(self):
        pass

    def get_tensor(self, index):
        return self.fn(self.inputs[-1])[None].astype(np.int64)


def constant(cls):
    return lambda tile: np.full(tile.shape[:2], cls)


def test_tile_starts_cover_with_overlap():
    s = tile_starts(1700, 513, 64)
    assert s[0] == 0 and s[-1] == 1700 - 513
    assert np.all(np.diff(s) <= 513 - 64)
    assert list(tile_starts(400, 513, 64)) == [0]
    assert list(tile_starts(513, 513, 64)) == [0]
    b = tile_bounds(s, 513, 1700)
    assert b[0] == 0 and b[-1] == 1700 and np.all(np.diff(b) > 0)
    # every pixel's owner tile contains it, at least overlap/2 from an inner tile border
    assert np.all(b[:-1] >= s) and np.all(b[1:] <= s + 513)
    assert np.all(b[1:-1] - s[1:] >= 32) and np.all(s[:-1] + 513 - b[1:-1] >= 32)
    with pytest.raises(ValueError, match="min_overlap"):
        tile_starts(100, 10, 10)


@pytest.mark.parametrize("size", [(30, 100), (8, 8), (5, 40), (100, 9)])
def test_constant_model_gives_its_class_everywhere(size):
    seg = TFLiteSegmenter(MockInterpreter(fn=constant(13)))
    native = seg.label(np.zeros((*size, 3), np.uint8))
    assert native.shape == size and native.dtype == np.uint8 and np.all(native == 13)
    mapped = TFLiteSegmenter(MockInterpreter(fn=constant(13)), load_label_map("cityscapes", "semantic_kitti"))
    assert np.all(mapped.label(np.zeros((*size, 3), np.uint8)) == class_table("semantic_kitti").names.index("car"))
    sky = TFLiteSegmenter(MockInterpreter(fn=constant(10)), load_label_map("cityscapes", "occ3d_nuscenes"))
    assert np.all(sky.label(np.zeros((*size, 3), np.uint8)) == 255)


def test_tiles_stitch_to_the_image_at_its_size():
    # the mock labels each pixel by the red value it sees; the image's red channel is the column index, so a
    # correct stitch (every pixel from the tile position it belongs to) returns the column index everywhere
    H, W = 12, 50
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.arange(W)[None, :]
    mock = MockInterpreter(size=(8, 8), fn=lambda t: t[..., 0].astype(np.int64), quantization=(1.0, 0))
    seg = TFLiteSegmenter(mock, scale=1.0, min_overlap=3, mean=0.0, std=1.0)
    out = seg.label(image)
    assert out.shape == (H, W)
    np.testing.assert_array_equal(out, np.broadcast_to(np.arange(W, dtype=np.uint8), (H, W)))
    assert len(mock.inputs) == seg.tiles_per_image((H, W)) == 2 * 10


def test_scale_resizes_and_labels_return_at_the_image_size():
    mock = MockInterpreter(size=(8, 8), fn=constant(2))
    seg = TFLiteSegmenter(mock)  # default scale: the smallest at which the image covers one tile
    assert seg.image_scale((4, 20)) == pytest.approx(2.0)
    assert seg.label(np.zeros((4, 20, 3), np.uint8)).shape == (4, 20)
    assert len(mock.inputs) == seg.tiles_per_image((4, 20)) == 6
    assert TFLiteSegmenter(MockInterpreter(fn=constant(2)), scale=3).image_scale((4, 20)) == 3
    np.testing.assert_array_equal(resize_labels(np.array([[1, 2], [3, 4]]), (4, 2)), [[1, 2], [1, 2], [3, 4], [3, 4]])


def test_preprocessing_follows_the_input_quantisation():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    seg = TFLiteSegmenter(MockInterpreter(quantization=(1 / 128, 128), fn=constant(0)))
    np.testing.assert_array_equal(seg.preprocess(pixels), pixels)  # DeepLab: raw RGB
    seg = TFLiteSegmenter(MockInterpreter(dtype=np.float32, quantization=(0.0, 0), fn=constant(0)))
    np.testing.assert_allclose(seg.preprocess(pixels), [[[-1.0, 0.0, 127 / 128]]])
    seg = TFLiteSegmenter(MockInterpreter(dtype=np.int8, quantization=(1 / 64, 0), fn=constant(0)))
    np.testing.assert_array_equal(seg.preprocess(pixels), [[[-64, 0, 64]]])  # (x - 128) / 128 * 64


def test_bad_models_and_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tflite"):
        load_interpreter(tmp_path / "nowhere.tflite")
    mock = MockInterpreter(fn=constant(0))
    mock.get_output_details = lambda: [{"index": 1, "shape": np.array([1, 8, 8, 19]), "dtype": np.float32}]
    with pytest.raises(ValueError, match="class map"):
        TFLiteSegmenter(mock)
    with pytest.raises(ValueError, match="quantisation"):
        TFLiteSegmenter(MockInterpreter(quantization=(0.0, 0), fn=constant(0)))
    with pytest.raises(ValueError, match="scale"):
        TFLiteSegmenter(MockInterpreter(fn=constant(0)), scale=0)
    with pytest.raises(ValueError, match="image must be"):
        TFLiteSegmenter(MockInterpreter(fn=constant(0))).label(np.zeros((8, 8), np.uint8))


def test_missing_runtime_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError("no ai_edge_litert")
        return real_import(name, *args, **kwargs)

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(ImportError, match=r"ai-edge-litert.*\.\[segmenter\]"):
        load_interpreter(model)


def test_cityscapes_maps_cover_all_trainids():
    for target, expect in (
        ("semantic_kitti", {"road": "road", "car": "car", "pole": "pole", "bus": "other-vehicle"}),
        ("occ3d_nuscenes", {"road": "driveable_surface", "building": "manmade", "person": "pedestrian"}),
    ):
        lm = load_label_map("cityscapes", target)
        assert len(lm.source_names) == 19
        lut = lm.lut(strict=True)
        names = lm.classes.names
        for src, tgt in expect.items():
            assert names[lut[CITYSCAPES.index(src)]] == tgt
        assert lut[CITYSCAPES.index("sky")] == 255
    counts = np.bincount([0, 0, 255, 10], minlength=256)
    assert class_shares(counts, CITYSCAPES) == {"road": 0.5, "none": 0.25, "sky": 0.25}


def test_cli_labels_a_semantic_kitti_layout(tmp_path, monkeypatch):
    for seq in ("00", "01"):
        (tmp_path / f"sequences/{seq}/image_2").mkdir(parents=True)
        Image.fromarray(np.zeros((6, 20, 3), np.uint8)).save(tmp_path / f"sequences/{seq}/image_2/000003.png")
    pairs = dataset_images("semantic_kitti", tmp_path)
    assert [p[1] for p in pairs] == [tmp_path / f"sequences/{s}/pseudo_2d/000003.png" for s in ("00", "01")]
    import occle_core.pseudo.tflite_segmenter as ts

    monkeypatch.setattr(ts, "load_interpreter", lambda path, threads=None: MockInterpreter(fn=constant(0)))
    args = ["--segmenter", "deeplab-cityscapes", "--model", "m.tflite", "--dataset", "semantic_kitti"]
    assert main([*args, "--data", str(tmp_path)]) == 0
    for _, out in pairs:
        with Image.open(out) as im:
            assert im.mode == "L" and im.size == (20, 6)
            assert np.all(np.asarray(im) == class_table("semantic_kitti").names.index("road"))
    assert main([*args, "--data", str(tmp_path / "nothing")]) == 2
    # with stored open-vocabulary masks the segmenter's labels are aligned: parking refines road
    parking = class_table("semantic_kitti").names.index("parking")
    mask = np.zeros((1, 6, 20), bool)
    mask[0, :, :5] = True
    for seq in ("00", "01"):
        (tmp_path / f"sequences/{seq}/open_vocab").mkdir()
        np.savez(tmp_path / f"sequences/{seq}/open_vocab/000003.npz", masks=mask, classes=[parking], scores=[0.9])
    assert main([*args, "--data", str(tmp_path), "--open-vocab-masks", str(tmp_path)]) == 0
    aligned = np.asarray(Image.open(pairs[1][1]))
    assert np.all(aligned[:, :5] == parking) and np.all(
        aligned[:, 5:] == class_table("semantic_kitti").names.index("road")
    )
    one = ["--segmenter", "deeplab-cityscapes", "--model", "m.tflite", "--native", "--image"]
    assert main([*one, str(pairs[0][0]), "--out", str(tmp_path / "n.png")]) == 0
    assert np.all(np.asarray(Image.open(tmp_path / "n.png")) == 0)


@pytest.mark.skipif(not MODEL.is_file(), reason="../shared/models/deeplab_cityscapes is absent")
@pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert is not installed (pip install -e '.[segmenter]')")
def test_deeplab_reproduces_its_reference_mask():
    # the reference mask is a 513x513 uint8 map of Cityscapes trainIds (the model's own output space)
    image = np.asarray(Image.open(MODEL_DIR / "cityscapes_segmentation.bmp").convert("RGB"))
    with Image.open(MODEL_DIR / "cityscapes_segmentation_mask.bmp") as im:
        mask = np.asarray(im)
    seg = TFLiteSegmenter(MODEL, num_threads=1)
    assert seg.input_size == (513, 513) and seg.tiles_per_image(image.shape[:2]) == 1
    labels = seg.label(image)
    assert labels.shape == mask.shape
    assert (labels == mask).mean() >= REFERENCE_AGREEMENT
    # the main classes of the scene are found with most of their reference area
    for cls in (0, 1, 8, 13):  # road, sidewalk, vegetation, car
        assert (labels[mask == cls] == cls).mean() > 0.6, CITYSCAPES[cls]
