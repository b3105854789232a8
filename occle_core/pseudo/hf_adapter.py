"""Pseudo labellers backed by local Hugging Face ``transformers`` models (optional dependency).

- :class:`HFSegmenterLabeller`: a dataset-specific semantic segmenter (Segformer, UperNet, DPT, BEiT, ... through
  ``AutoModelForSemanticSegmentation``; Mask2Former / MaskFormer through ``AutoModelForUniversalSegmentation``),
  its classes (``config.id2label``) carried to the target classes by a :class:`~occle_core.pseudo.align.LabelMap`.
- :class:`HFCLIPSegSegmenter`: an open-vocabulary segmenter (CLIPSeg) answering text prompts with per-class
  masks and per-pixel scores, for :class:`~occle_core.pseudo.align.AlignedLabeller`.

Models are loaded from a local folder only (``from_pretrained(path, local_files_only=True)``): nothing is
downloaded. The folder must hold the model (``config.json`` + weights) and its preprocessor configuration, as
``save_pretrained`` of the model and of its image processor / processor write them. ``transformers`` is
imported when a labeller is built, never at module import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occle_core.device import resolve_device
from occle_core.labels import IGNORE_INDEX
from occle_core.pseudo.align import LabelMap, OpenVocabResult
from occle_core.pseudo.labeller import PseudoLabeller, check_image

UNIVERSAL_MODEL_TYPES = ("mask2former", "maskformer")


def require_transformers() -> Any:
    """Import ``transformers`` or raise an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "the Hugging Face pseudo labellers need the optional package 'transformers': "
            "pip install transformers (or pip install -e '.[dev]')"
        ) from exc
    return transformers


def _check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model in {path} (config.json missing); models load from a local "
            f"folder written by save_pretrained, never from the hub"
        )
    return path


class HFSegmenterLabeller(PseudoLabeller):
    """Pseudo labels from a local ``transformers`` semantic segmentation model.

    Args:
        model_dir: folder with the model and its image processor (``save_pretrained`` output).
        label_map: maps the model's class names (``config.id2label``) to the target classes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes:
        source_names: the model's class names by id.
        unmapped: model class names the map does not mention (they give 255).
        lut: (256,) uint8 model class id -> target class id.
    """

    def __init__(self, model_dir: str | Path, label_map: LabelMap, device: str = "auto") -> None:
        tf = require_transformers()
        path = _check_model_dir(model_dir)
        self.device = resolve_device(device)
        self.label_map = label_map
        self.classes = label_map.classes
        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type in UNIVERSAL_MODEL_TYPES:
            auto = tf.AutoModelForUniversalSegmentation
        else:
            auto = tf.AutoModelForSemanticSegmentation
        try:
            self.model = auto.from_pretrained(path, local_files_only=True).to(self.device).eval()
        except ValueError as exc:
            raise ValueError(
                f"{path}: model type {config.model_type!r} is not a semantic segmentation model ({exc})"
            ) from exc
        try:
            self.processor = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"{path}: no usable image processor configuration (preprocessor_config.json); "
                f"save it with the model's image processor save_pretrained ({exc})"
            ) from exc
        id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        self.source_names = [id2label.get(i, f"class_{i}") for i in range(max(id2label, default=-1) + 1)]
        if not self.source_names:
            raise ValueError(f"{path}: config.id2label is empty; the class names are needed to map labels")
        self.unmapped = label_map.unmapped(self.source_names)
        self.lut = label_map.lut(self.source_names)

    @torch.inference_mode()
    def predict_source(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int64 model class ids of ``image`` (H, W, 3) uint8, at the image resolution."""
        image = check_image(image)
        h, w = image.shape[:2]
        inputs = self.processor(images=image, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = self.model(**inputs)
        seg = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[(h, w)])[0]  # (H, W)
        return seg.cpu().numpy().astype(np.int64)

    def label(self, image: np.ndarray, frame_id: str = "") -> np.ndarray:
        """(H, W) uint8 target classes (255 where the model's class has no target)."""
        src = self.predict_source(image)
        out = np.full(src.shape, IGNORE_INDEX, np.uint8)
        known = (src >= 0) & (src < len(self.lut))
        out[known] = self.lut[src[known]]
        return out


class HFCLIPSegSegmenter:
    """Open-vocabulary masks from a local CLIPSeg model (``CLIPSegForImageSegmentation`` + its processor).

    Each target class is scored by the highest sigmoid probability over its prompts, upsampled to the image
    size; its mask is where that probability reaches ``mask_threshold``.

    Args:
        model_dir: folder with the model and its processor (tokenizer + image processor).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        mask_threshold: probability above which a pixel belongs to the mask.
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", mask_threshold: float = 0.5) -> None:
        tf = require_transformers()
        path = _check_model_dir(model_dir)
        self.device = resolve_device(device)
        self.model = tf.CLIPSegForImageSegmentation.from_pretrained(path, local_files_only=True).to(self.device)
        self.model.eval()
        self.processor = tf.AutoProcessor.from_pretrained(path, local_files_only=True)
        self.mask_threshold = float(mask_threshold)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, prompts: Mapping[int, Sequence[str]], frame_id: str = "") -> OpenVocabResult:
        """Masks of the target classes named in ``prompts`` (class id -> text prompts)."""
        image = check_image(image)
        h, w = image.shape[:2]
        classes = [int(c) for c, p in prompts.items() if len(p)]
        if not classes:
            empty = np.zeros((0, h, w), bool)
            return OpenVocabResult(empty, np.zeros(0, np.int64), np.zeros((0, h, w), np.float32))
        texts = [str(t) for c in classes for t in prompts[c]]
        owner = torch.tensor([i for i, c in enumerate(classes) for _ in prompts[c]], device=self.device)  # (P,)
        inputs = self.processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        logits = self.model(**inputs).logits  # (P, h', w') or (h', w') when P == 1
        logits = logits.reshape(len(texts), 1, *logits.shape[-2:]).float()
        prob = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear"))[:, 0]  # (P, H, W)
        per_class = torch.zeros((len(classes), h, w), device=self.device)
        index = owner[:, None, None].expand_as(prob)
        per_class.scatter_reduce_(0, index, prob, "amax", include_self=False)  # (M, H, W) best prompt per class
        scores = per_class.cpu().numpy().astype(np.float32)
        return OpenVocabResult(scores >= self.mask_threshold, np.asarray(classes, np.int64), scores)
