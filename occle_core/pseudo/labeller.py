"""The 2D pseudo labeller interface and the file-backed labeller.

A pseudo labeller turns a camera image into a (H, W) uint8 map of *target* classes (the learning classes of
the dataset being trained, e.g. SemanticKITTI's 20), with 255 where it has no label. Labellers backed by
models (``occle_core.pseudo.hf_adapter``) produce them online; :class:`FileLabeller` reads labels that were
produced offline and stored as PNGs, the layout the training data uses::

    <root>/sequences/<SS>/pseudo_2d/<NNNNNN>.png      (8-bit single channel, values = target class, 255 = none)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from occle_core.data.label_png import read_label_png
from occle_core.labels import ClassTable

DEFAULT_PATTERN = "sequences/{sequence}/pseudo_2d/{frame}.png"


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a camera image: (H, W, 3) uint8 RGB; returns it as an ndarray."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image


def check_labels(labels: np.ndarray, classes: ClassTable | None, where: str) -> np.ndarray:
    """Validate a (H, W) label map: uint8, values < K or 255 when ``classes`` is given."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{where}: pseudo labels must be (H, W), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        raise ValueError(f"{where}: pseudo labels must be uint8, got {labels.dtype}")
    if classes is not None:
        bad = (labels >= classes.num_classes) & (labels != classes.ignore_index)
        if bad.any():
            raise ValueError(
                f"{where}: {int(bad.sum())} pixels hold class ids >= {classes.num_classes} ({classes.name}) "
                f"that are not {classes.ignore_index}, e.g. {int(labels[bad][0])}"
            )
    return labels


class PseudoLabeller(ABC):
    """Produces 2D pseudo labels in the target class space.

    Subclasses implement :meth:`label`; ``labeller(image, frame_id)`` calls it.
    """

    #: class table of the labels produced (None if the subclass does not know it)
    classes: ClassTable | None = None

    @abstractmethod
    def label(self, image: np.ndarray, frame_id: str) -> np.ndarray:
        """Pseudo labels of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            frame_id: ``"<sequence>/<frame>"`` or a dataset token (file-backed labellers use it).

        Returns:
            (H, W) uint8 target classes, 255 = no label.
        """

    def __call__(self, image: np.ndarray, frame_id: str) -> np.ndarray:
        return self.label(image, frame_id)


def split_frame_id(frame_id: str) -> tuple[str, str]:
    """``"08/000120"`` -> (``"08"``, ``"000120"``); a token without ``/`` gives (``""``, token)."""
    sequence, _, frame = frame_id.rpartition("/")
    return sequence, frame


class FileLabeller(PseudoLabeller):
    """Reads pseudo labels stored as PNGs.

    Args:
        root: dataset root.
        pattern: path under ``root`` with the fields ``{sequence}``, ``{frame}`` (from
            :func:`split_frame_id`) and ``{frame_id}``; default ``sequences/{sequence}/pseudo_2d/{frame}.png``.
        classes: optional class table; labels are then checked to be < K or 255.
    """

    def __init__(self, root: str | Path, pattern: str = DEFAULT_PATTERN, classes: ClassTable | None = None) -> None:
        self.root = Path(root)
        self.pattern = pattern
        self.classes = classes

    def path(self, frame_id: str) -> Path:
        """File holding the labels of ``frame_id``."""
        sequence, frame = split_frame_id(frame_id)
        return self.root / self.pattern.format(sequence=sequence, frame=frame, frame_id=frame_id)

    def read(self, frame_id: str) -> np.ndarray:
        """(H, W) uint8 labels of ``frame_id`` without an image to check the size against."""
        path = self.path(frame_id)
        if not path.is_file():
            raise FileNotFoundError(f"pseudo-label file not found for frame {frame_id!r}: {path}")
        return check_labels(read_label_png(path), self.classes, str(path))

    def label(self, image: np.ndarray, frame_id: str) -> np.ndarray:
        """The stored labels of ``frame_id``; their size must match ``image``."""
        image = check_image(image)
        labels = self.read(frame_id)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{self.path(frame_id)}: labels are {labels.shape} but the image is {image.shape[:2]}")
        return labels
