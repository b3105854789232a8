"""A dataset-specific 2D segmenter run by the TFLite interpreter (``ai-edge-litert``, optional extra ``segmenter``).

The model is a fixed-size semantic segmenter whose output is the per-pixel argmax class (e.g. the Cityscapes
DeepLab MobileNet-EdgeTPU: input ``1x513x513x3`` uint8, output ``1x513x513`` int64 trainIds 0..18). Camera images
are wider than the model input (KITTI 1242x375, nuScenes 1600x900), so :class:`TFLiteSegmenter`:

1. resizes the image by ``scale`` (default: the smallest scale at which the short side covers the input size),
2. cuts overlapping input-sized tiles (edge-padded where the scaled image is smaller than a tile),
3. runs each tile and stitches the class maps: every pixel takes the label of the tile whose core holds it
   (overlaps are split at their middle, so each pixel comes from the tile where it is furthest from an edge),
4. resizes the stitched map back to the image size (nearest) and maps source classes to target classes.

The model has no logits output, so overlaps cannot be averaged; splitting them at the middle keeps every pixel
at least ``overlap / 2`` pixels from the tile border it is labelled by.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from occle_core.labels import IGNORE_INDEX
from occle_core.pseudo.align import LabelMap
from occle_core.pseudo.labeller import PseudoLabeller, check_image

EXTRA = "segmenter"


class Interpreter(Protocol):
    """The part of ``ai_edge_litert.interpreter.Interpreter`` the segmenter uses."""

    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, index: int, value: np.ndarray) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, index: int) -> np.ndarray: ...


def load_interpreter(model_path: str | Path, num_threads: int | None = None) -> Interpreter:
    """A TFLite interpreter for ``model_path`` with its tensors allocated.

    Raises:
        ImportError: ``ai-edge-litert`` is not installed (names the extra that installs it).
        FileNotFoundError: the model file is missing.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite segmenter model not found: {path}")
    try:
        from ai_edge_litert.interpreter import Interpreter as LiteRT
    except ImportError as exc:
        raise ImportError(
            f"the TFLite segmenter needs the optional package 'ai-edge-litert': pip install ai-edge-litert "
            f"(or pip install -e '.[{EXTRA}]')"
        ) from exc
    interpreter = LiteRT(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def tile_starts(length: int, tile: int, min_overlap: int) -> np.ndarray:
    """(n,) int64 start offsets of tiles of size ``tile`` covering ``[0, length)``, evenly spaced, the first at 0
    and the last ending at ``length``, neighbours overlapping by at least ``min_overlap`` (one tile if it fits)."""
    if tile < 1 or not 0 <= min_overlap < tile:
        raise ValueError(f"tile must be >= 1 and 0 <= min_overlap < tile, got tile={tile} min_overlap={min_overlap}")
    if length <= tile:
        return np.zeros(1, np.int64)
    n = int(np.ceil((length - tile) / (tile - min_overlap))) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def tile_bounds(starts: np.ndarray, tile: int, length: int) -> np.ndarray:
    """(n + 1,) int64 ownership edges: tile ``i`` labels ``[edges[i], edges[i + 1])``; overlaps split midway."""
    mids = (starts[1:] + starts[:-1] + tile) // 2  # middle of each overlap
    return np.concatenate([[0], mids, [length]]).astype(np.int64)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``size`` = (H, W) (pixel centres aligned)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


class TFLiteSegmenter(PseudoLabeller):
    """Pseudo labels from a TFLite semantic segmenter whose output is a class map.

    Args:
        model: path of the ``.tflite`` file, or an already built interpreter (tensors allocated).
        label_map: maps the model's classes (``label_map.source_names`` by id) to target classes; None returns
            the model's own class ids ("native" labels) as uint8.
        scale: image resize factor before tiling; None = the smallest scale at which the image covers one model
            input in both directions (KITTI 375x1242 -> 1.37, four 513x513 tiles). Larger scales (e.g. 2 on
            KITTI) recover thin poles and signs at more tiles.
        min_overlap: minimum overlap of neighbouring tiles in model-input pixels; None = 1/8 of the input (64 of 513).
        mean, std: input normalisation ``real = (rgb - mean) / std`` of the model; a quantised input is fed
            ``round(real / scale_q + zero_point)``. The defaults (128, 128) are DeepLab's [-1, 1) range, which the
            Cityscapes model's quantisation (1/128, 128) maps back to the raw 0..255 RGB values.
        num_threads: interpreter threads when ``model`` is a path (None = the runtime's default).

    Attributes:
        input_size: (h, w) model input size; classes: target class table (None for native labels).
    """

    def __init__(
        self,
        model: str | Path | Interpreter,
        label_map: LabelMap | None = None,
        scale: float | None = None,
        min_overlap: int | None = None,
        mean: float = 128.0,
        std: float = 128.0,
        num_threads: int | None = None,
    ) -> None:
        self.interpreter = load_interpreter(model, num_threads) if isinstance(model, (str, Path)) else model
        inp, out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        shape = tuple(int(v) for v in inp["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"TFLite segmenter input must be 1xHxWx3, got {'x'.join(map(str, shape))}")
        out_shape = tuple(int(v) for v in out["shape"])
        if out_shape not in ((1, *shape[1:3]), (1, *shape[1:3], 1)):
            raise ValueError(f"TFLite segmenter output must be a 1x{shape[1]}x{shape[2]} class map, got {out_shape}")
        if not np.issubdtype(np.dtype(out["dtype"]), np.integer):
            raise ValueError(f"TFLite segmenter output must hold integer class ids, got dtype {out['dtype']}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be > 0 or None, got {scale}")
        self.input_size = (shape[1], shape[2])
        min_overlap = min(self.input_size) // 8 if min_overlap is None else min_overlap
        if not 0 <= min_overlap < min(self.input_size):
            raise ValueError(f"min_overlap must be in [0, {min(self.input_size)}), got {min_overlap}")
        self._in_index, self._out_index = int(inp["index"]), int(out["index"])
        self._in_dtype = np.dtype(inp["dtype"])
        q_scale, q_zero = inp.get("quantization", (0.0, 0))
        self._q = (float(q_scale), float(q_zero)) if q_scale else None
        if np.issubdtype(self._in_dtype, np.integer) and self._q is None:
            raise ValueError(f"TFLite segmenter integer input ({self._in_dtype}) needs quantisation parameters")
        self.scale = scale
        self.min_overlap = int(min_overlap)
        self.mean, self.std = float(mean), float(std)
        self.label_map = label_map
        self.classes = None if label_map is None else label_map.classes
        self.lut = None if label_map is None else label_map.lut()  # (256,) uint8 source id -> target id

    def preprocess(self, tiles: np.ndarray) -> np.ndarray:
        """(..., h, w, 3) uint8 RGB -> the model's input dtype and value range."""
        real = (tiles.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        if self._q is None:
            return real.astype(self._in_dtype)
        q = np.round(real / np.float32(self._q[0]) + np.float32(self._q[1]))
        info = np.iinfo(self._in_dtype)
        return np.clip(q, info.min, info.max).astype(self._in_dtype)

    def image_scale(self, image_size: tuple[int, int]) -> float:
        """The resize factor used for an image of ``image_size`` (H, W)."""
        if self.scale is not None:
            return float(self.scale)
        return max(self.input_size[0] / image_size[0], self.input_size[1] / image_size[1])

    def layout(self, image_size: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
        """How an image of ``image_size`` (H, W) is cut: its scaled size (h, w) and the (ny,) row and (nx,) column
        starts of the tiles in the scaled image, edge-padded to at least one tile."""
        s = self.image_scale(image_size)
        sh, sw = (max(1, round(v * s)) for v in image_size)
        th, tw = self.input_size
        return (sh, sw), tile_starts(max(sh, th), th, self.min_overlap), tile_starts(max(sw, tw), tw, self.min_overlap)

    def tiles_per_image(self, image_size: tuple[int, int]) -> int:
        """Number of model calls for an image of ``image_size`` (H, W)."""
        _, ys, xs = self.layout(image_size)
        return len(ys) * len(xs)

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        """(h, w) int64 source classes of one (h, w, 3) uint8 model-sized tile."""
        self.interpreter.set_tensor(self._in_index, self.preprocess(tile)[None])
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self._out_index)).reshape(self.input_size).astype(np.int64)

    def predict_source(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int64 model class ids of ``image`` (H, W, 3) uint8, tiled and stitched at the image size."""
        image = check_image(image)
        H, W = image.shape[:2]
        (sh, sw), ys, xs = self.layout((H, W))
        scaled = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR)) if (sh, sw) != (H, W) else image
        th, tw = self.input_size
        ph, pw = max(sh, th), max(sw, tw)
        if (ph, pw) != (sh, sw):
            scaled = np.pad(scaled, ((0, ph - sh), (0, pw - sw), (0, 0)), mode="edge")
        by, bx = tile_bounds(ys, th, ph), tile_bounds(xs, tw, pw)
        stitched = np.empty((ph, pw), np.int64)
        for i, y in enumerate(ys):  # a handful of tiles; each is one model call
            for j, x in enumerate(xs):
                labels = self.run_tile(scaled[y : y + th, x : x + tw])
                core = labels[by[i] - y : by[i + 1] - y, bx[j] - x : bx[j + 1] - x]  # the part this tile owns
                stitched[by[i] : by[i + 1], bx[j] : bx[j + 1]] = core
        return resize_labels(stitched[:sh, :sw], (H, W))

    def label(self, image: np.ndarray, frame_id: str = "") -> np.ndarray:
        """(H, W) uint8 labels: target classes (255 where the source class has none), or the model's own ids."""
        src = self.predict_source(image)
        if self.lut is None:
            if src.min(initial=0) < 0 or src.max(initial=0) > 254:
                raise ValueError(
                    f"native class ids must lie in 0..254 to be stored as uint8, got {src.min()}..{src.max()}"
                )
            return src.astype(np.uint8)
        out = np.full(src.shape, IGNORE_INDEX, np.uint8)
        known = (src >= 0) & (src < len(self.lut))
        out[known] = self.lut[src[known]]
        return out


def class_shares(counts: np.ndarray, names: Sequence[str], ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Share per class name of pixel ``counts`` (indexed by label value; ``"none"`` for ``ignore_index``), the
    nonzero ones, largest first."""
    counts = np.asarray(counts, np.int64)
    total = max(int(counts.sum()), 1)
    shares = {
        names[c] if c < len(names) else ("none" if c == ignore_index else str(c)): counts[c] / total
        for c in np.flatnonzero(counts)
    }
    return {k: float(v) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
