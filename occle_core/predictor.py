"""Inference API: load a checkpoint once, then ``predict(image, points, calib) -> (X, Y, Z) uint8 labels``
(one camera) or ``predict([(image, calib), ...], points)`` (the checkpoint's camera set, front camera first).

This is what the ROS node and ``occle-predict`` call. The checkpoint (config, class table, grid, weights) is
read once with ``weights_only=True``; the network is built from its config, put in eval mode and run under
``torch.inference_mode``. Inputs are checked and turned into a :class:`~occle_core.data.batch.Batch` by the
same :func:`~occle_core.data.batch.collate_inputs` as in training (image and calibration resized to the
configured size, points outside the grid dropped), so training and inference preprocess identically; no training
target is built.

Devices are resolved by :func:`occle_core.device.resolve_device`: ``"auto"`` takes CUDA when available, else the
CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` raise ``ValueError("device 'cuda' requested but CUDA is not available")``
on a host without CUDA (or naming the missing index).

``occle-predict --checkpoint C --data ROOT --sequence SS [--frames 0 5 10-20] --out DIR`` runs a checkpoint on
frames of a SemanticKITTI-layout sequence and writes ``DIR/sequences/SS/predictions/NNNNNN.label`` (uint16
raw SemanticKITTI ids, the benchmark's submission format; learning ids for tables without a raw map) and a PNG
per frame under ``DIR/png/`` (prediction beside the ground truth when the frame has voxel labels).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from occle_core.checkpoint import load_model
from occle_core.config import OccleConfig
from occle_core.data.batch import Batch, collate_inputs
from occle_core.data.sample import DT_COLUMN, CameraView, Sample
from occle_core.device import resolve_device
from occle_core.geometry import Calib, VoxelGrid
from occle_core.labels import ClassTable
from occle_core.model.occle import OccLE

DEFAULT_CHECKPOINT = ("models", "occle_tiny_synthetic.pt")
Views = Sequence[tuple[np.ndarray, Calib]]
ImageOrViews = np.ndarray | Views  # one camera's image, or the (image, Calib) views of every camera


def default_checkpoint() -> Path:
    """Path of the shipped checkpoint ``models/occle_tiny_synthetic.pt`` (FileNotFoundError when absent)."""
    from occle_core.resources import resource_path

    return resource_path(*DEFAULT_CHECKPOINT)


class Predictor:
    """Semantic occupancy from the camera images (one, or the checkpoint's camera set) and one LiDAR scan.

    Args:
        checkpoint: an occle checkpoint; None takes the shipped default (``models/occle_tiny_synthetic.pt``).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        ground_gate: metres above the scan's fitted ground plane beyond which :meth:`predict` gives a voxel no
            ground class, nor to the lower flank of an object (``model.ground_gate``,
            :mod:`~occle_core.model.ground_gate`); 0 = off; None keeps the checkpoint's.

    Attributes:
        grid: the output voxel grid; classes: the class table; config: the model's config; device.
        grid_frame: ``"lidar"`` or ``"ego"``, the frame the points and every camera's ``T_cam<-grid`` must be in.
        camera_names: the checkpoint's camera set, front camera first (``["image_2"]`` for one camera); a
            checkpoint trained with past images (``data.past_images`` M) ends with ``image_2@-1`` .. ``image_2@-M``:
            the views of the M previous frames, each calibration mapping the CURRENT grid frame to that past image
            (:func:`occle_core.data.multiframe.past_view_calib`; ``MultiFrameDataset`` builds them).
        time_features: the checkpoint was trained on multi-frame input (``model.time_features``,
            ``data.past_frames`` > 0): ``points`` must then carry the time offset ``dt`` as a fifth column (the
            current scan and the past scans merged into its frame, as :mod:`occle_core.data.multiframe` builds them).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        CheckpointError: it is damaged, unsafe, or does not fit the network.
        ValueError: unknown or unavailable device, or a bad ``ground_gate``.
    """

    grid: VoxelGrid
    classes: ClassTable
    config: OccleConfig
    device: torch.device
    grid_frame: str
    camera_names: list[str]
    time_features: bool

    def __init__(
        self, checkpoint: str | Path | None = None, device: str = "auto", ground_gate: float | None = None
    ) -> None:
        dev = resolve_device(device)
        path = default_checkpoint() if checkpoint is None else Path(checkpoint)
        model, cfg, _ = load_model(path)
        if ground_gate is not None:
            model.set_ground_gate(ground_gate)
            cfg.model.ground_gate = model.ground_gate
        self.checkpoint_path: Path | None = path
        self._setup(model, cfg, dev)

    @classmethod
    def from_model(cls, model: OccLE, cfg: OccleConfig, device: str = "auto") -> Predictor:
        """A predictor around an already built network (tests, benchmarks, right after training); grid frame and
        camera set from ``cfg.data`` (:meth:`~occle_core.config.DataConfig.frame` / ``camera_names``)."""
        self = cls.__new__(cls)
        self.checkpoint_path = None
        cfg = copy.deepcopy(cfg)
        cfg.data.grid = cfg.data.voxel_grid().to_dict()
        self._setup(model, cfg, resolve_device(device))
        return self

    def _setup(self, model: OccLE, cfg: OccleConfig, device: torch.device) -> None:
        self.config = cfg
        self.device = device
        self.grid = cfg.data.voxel_grid()
        self.classes = cfg.data.classes()
        self.grid_frame = cfg.data.frame()
        self.camera_names = cfg.data.camera_names()
        self.time_features = bool(cfg.model.time_features)
        self.model = model.to(device).eval()

    def views(self, image: ImageOrViews, calib: Calib | None = None) -> list[tuple[np.ndarray, Calib]]:
        """The camera views of a call: ``[(image, calib)]`` for the single-camera form, the list itself for
        ``views``; each checked (see :meth:`validate`).

        Raises:
            ValueError: the wrong camera count for the checkpoint, a view that is not an (image, Calib) pair, or
                a bad image / calibration (naming ``views[i]`` in the multi-camera form).
        """
        n = len(self.camera_names)
        if isinstance(image, list | tuple):
            if calib is not None:
                raise ValueError("calib must be None when views are given (each view carries its own Calib)")
            if len(image) != n:
                raise ValueError(
                    f"views: this checkpoint takes {n} camera(s) {self.camera_names} in that order, got {len(image)}"
                )
            for i, view in enumerate(image):
                if not isinstance(view, list | tuple) or len(view) != 2:
                    raise ValueError(f"views[{i}] must be an (image, Calib) pair, got {type(view).__name__}")
                _check_view(view[0], view[1], f"views[{i}] ({self.camera_names[i]}) ")
            return [(v[0], v[1]) for v in image]
        if n != 1:
            raise ValueError(
                f"views: this checkpoint takes {n} cameras {self.camera_names}; call predict([(image, calib), ...], "
                "points) with one view per camera"
            )
        _check_view(image, calib, "")
        return [(image, calib)]

    def validate(self, image: np.ndarray, points: np.ndarray, calib: Calib) -> np.ndarray:
        """Check a single-camera input; returns the (N, 4) float32 x, y, z, intensity columns (a view when they
        already are).

        Rows with NaN/Inf are not removed here: cropping to the grid drops them (see
        :func:`~occle_core.data.batch.select_points`).

        Raises:
            ValueError: naming the field and the expected shape / dtype / size.
        """
        _check_view(image, calib, "")
        return _check_points(points, self._time_columns())

    def _time_columns(self) -> str | None:
        """What the points of a multi-frame checkpoint must hold beyond x, y, z, intensity (None: nothing)."""
        if not self.time_features:
            return None
        past = self.config.data.past_frames
        return f"dt (seconds, 0 for the current scan, < 0 for the past scans) of the {past} merged past scans"

    def batch(self, image: ImageOrViews, points: np.ndarray, calib: Calib | None = None) -> Batch:
        """Validated network input of one frame on the predictor's device (what :meth:`predict` feeds the model);
        ``image`` is one image (with ``calib``) or the list of (image, Calib) views."""
        views = self.views(image, calib)
        pts = _check_points(points, self._time_columns())
        cams = [CameraView(name, img, cal) for name, (img, cal) in zip(self.camera_names, views)]
        extras = {"dt_column": DT_COLUMN} if self.time_features else {}
        sample = Sample("predict", pts, cams, grid_frame=self.grid_frame, extras=extras)
        return collate_inputs([sample], self.config).to(self.device)

    @torch.inference_mode()
    def predict_logits(self, image: ImageOrViews, points: np.ndarray, calib: Calib | None = None) -> torch.Tensor:
        """(K, X, Y, Z) float logits on the predictor's device (same inputs and validation as :meth:`predict`;
        the network's, before the ground gate of :meth:`predict`)."""
        return self.model(self.batch(image, points, calib), inference=True).logits[0]

    @torch.inference_mode()
    def predict(self, image: ImageOrViews, points: np.ndarray, calib: Calib | None = None) -> np.ndarray:
        """Semantic occupancy of one frame.

        Args:
            image: (H, W, 3) uint8 RGB of the single camera (with ``calib``), or the multi-camera ``views``: a list
                of ``(image (H, W, 3) uint8, Calib)``, one per camera of :attr:`camera_names`, in that order
                (front camera first; images may differ in size, each is resized to the configured size).
            points: (N, >=4) float x, y, z, intensity in the grid frame :attr:`grid_frame` (rows with NaN/Inf
                are dropped); (N, >=5) with ``dt`` in column 4 for a multi-frame checkpoint (:attr:`time_features`).
            calib: the camera model of ``image`` (``calib.image_size`` must equal the image size); None with
                views. Every ``T_cam_lidar`` maps the grid frame to its camera.

        Returns:
            (X, Y, Z) uint8 class ids of ``self.classes`` (``predict_logits(...).argmax(0)``, computed without
            the float logits grid, and with ``model.ground_gate`` on no ground class where the scan says no ground);
            ``classes.empty_index`` marks free space.
        """
        return self.model.predict_labels(self.batch(image, points, calib))[0].cpu().numpy()


def _check_view(image: np.ndarray, calib: Calib, prefix: str) -> None:
    """Raise ``ValueError`` naming ``<prefix>image`` / ``<prefix>calib`` for a bad image or calibration."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{prefix}image must be an (H, W, 3) uint8 RGB array, got shape {getattr(image, 'shape', None)}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"{prefix}image must be uint8 RGB, got dtype {image.dtype}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f"{prefix}image must be at least 8x8 pixels, got {image.shape[:2]}")
    if not isinstance(calib, Calib):
        raise ValueError(f"{prefix}calib must be an occle_core.geometry.Calib, got {type(calib).__name__}")
    if tuple(calib.image_size) != tuple(image.shape[:2]):
        raise ValueError(f"{prefix}calib image_size {calib.image_size} does not match the image size {image.shape[:2]}")


def _check_points(points: np.ndarray, time_column: str | None = None) -> np.ndarray:
    """(N, >=4) float points -> the (N, 4) float32 x, y, z, intensity columns, or with ``time_column`` (what the
    fifth column must hold) the (N, 5) float32 columns with it; ``ValueError`` naming ``points``."""
    width = 4 if time_column is None else 5
    what = "x, y, z, intensity" + ("" if time_column is None else f", {time_column}")
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] < width:
        raise ValueError(
            f"points must be an (N, >={width}) array of {what}, got shape {getattr(points, 'shape', None)}"
        )
    if not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"points must be floating point (float32), got dtype {points.dtype}")
    return np.asarray(points[:, :width], np.float32)


# ------------------------------------------------------------------------------------------------------- CLI


def parse_frames(tokens: Sequence[str]) -> list[int]:
    """``["0", "5", "10-12"]`` -> ``[0, 5, 10, 11, 12]`` (ranges inclusive, order kept, duplicates dropped)."""
    out: list[int] = []
    for tok in tokens:
        for part in str(tok).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise ValueError(f"--frames entries must be N or A-B (inclusive), got {part!r}")
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise ValueError(f"--frames range {part!r} is empty (end before start)")
            out.extend(i for i in range(first, last + 1) if i not in out)
    return out


def _raw_ids(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    """Learning classes -> raw SemanticKITTI ids (uint16) when the table has a raw map, else learning ids."""
    if classes.learning_map_inv is None:
        return labels.astype(np.uint16)
    return np.asarray(classes.learning_map_inv, np.uint16)[labels]


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-predict``: predictions and PNGs for frames of a SemanticKITTI-layout sequence; returns 0 on success."""
    p = argparse.ArgumentParser(prog="occle-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="occle checkpoint (default: the shipped tiny model)")
    p.add_argument("--data", required=True, help="dataset root holding sequences/")
    p.add_argument("--sequence", required=True, help="sequence id, e.g. 08")
    p.add_argument("--frames", nargs="*", default=None, help="frame numbers or ranges A-B (default: every frame)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-png", action="store_true", help="write the .label files only")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"occle-predict: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from occle_core.data.batch import select_views
    from occle_core.data.multiframe import MultiFrameDataset
    from occle_core.data.semantic_kitti import SemanticKittiDataset, sequence_dir, write_voxel_labels
    from occle_core.render import render_comparison, render_sample_overview

    predictor = Predictor(args.checkpoint, args.device)
    data = SemanticKittiDataset(args.data, [args.sequence], with_labels=False)
    # a multi-frame checkpoint reads each frame with its past scans merged in and its past views, as in training
    trained = predictor.config.data
    if trained.past_frames:  # the ablation without time channels was trained on merged scans too
        frames = MultiFrameDataset(data, int(trained.past_frames), int(trained.past_images))
    else:
        frames = data
    index = {int(frame): i for i, (_, frame) in enumerate(data.frames)}
    if args.frames:
        wanted = parse_frames(args.frames)
        missing = [f for f in wanted if f not in index]
        if missing:
            raise ValueError(
                f"frames {missing[:5]} not in sequence {args.sequence} (it has frames {min(index)}..{max(index)})"
            )
    else:
        wanted = sorted(index)
    out = Path(args.out)
    seq = data.frames[0][0]
    label_dir = out / "sequences" / seq / "predictions"
    label_dir.mkdir(parents=True, exist_ok=True)
    classes = predictor.classes
    times = []
    for n, frame in enumerate(wanted):
        sample = frames[index[frame]]
        t0 = time.perf_counter()
        views = [(v.image, v.calib) for v in select_views(sample, predictor.camera_names)]
        labels = predictor.predict(views, sample.points)
        times.append(time.perf_counter() - t0)
        name = f"{frame:06d}"
        write_voxel_labels(label_dir / f"{name}.label", _raw_ids(labels, classes))
        if not args.no_png:
            png = out / "png" / f"{seq}_{name}.png"
            truth = _truth(data, sequence_dir(args.data, seq), name, labels.shape)
            if truth is not None:
                gt, invalid = truth
                render_comparison(labels, gt, classes, png, title=f"{seq}/{name}", mask=~invalid, grid=predictor.grid)
            else:
                render_sample_overview(sample.image, labels, classes, sample.pseudo2d, path=png)
        print(f"[{n + 1}/{len(wanted)}] {seq}/{name}: {times[-1] * 1000:.0f} ms", flush=True)
    print(
        f"wrote {len(wanted)} predictions to {label_dir}; mean {np.mean(times) * 1000:.0f} ms per frame "
        f"on {predictor.device}"
    )
    return 0


def _truth(data, seq_dir: Path, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth labels and invalid mask of a frame when it has voxel labels of the predicted grid shape."""
    vox = seq_dir / "voxels"
    if not (vox / f"{name}.label").is_file() or not (vox / f"{name}.invalid").is_file():
        return None
    labels, invalid = data.read_labels(seq_dir.name, name)
    if labels.shape != tuple(shape):
        return None
    return labels, invalid
