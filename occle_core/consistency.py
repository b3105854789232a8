"""Label-free checks of a predicted occupancy grid against the LiDAR scan of its frame (and 3D boxes if any).

Where no voxel labels exist (real KITTI object frames, a robot's own logs), a prediction can still be held to
what the sensor saw. For one frame with LiDAR returns in the grid frame and a predicted (X, Y, Z) label grid:

- **hit recall**: of the voxels holding returns, the share predicted occupied (not the empty class).
- **free-space false occupancy**: of the voxels that rays cross at least ``free_margin`` metres before their
  return (and that hold no return), the share predicted occupied.
- **ground consistency**: a ground plane is fitted to the returns (RANSAC over near-vertical normals, then least
  squares on its inliers, so a tilted or offset road is handled); of the returns within ``ground_tol`` of it,
  the share whose voxel holds a ground class (SemanticKITTI: road, parking, sidewalk, other-ground, terrain;
  Occ3D: driveable_surface, other_flat, sidewalk, terrain).
- **occupied share**: the predicted occupied share of the grid, and inside the LiDAR-observed voxels (hit or
  crossed) next to the share of them the LiDAR found occupied.
- with 3D vehicle boxes (LiDAR frame x, y, z centre, l, w, h, yaw; boxes grown by ``box_margin``):
  **vehicle recall**, the share of the above-ground returns inside a box whose voxel holds a vehicle class;
  the **false-vehicle rate** (the issue's target), of the above-ground returns outside every box, the share whose
  voxel holds a vehicle class (a false-positive rate: what share of the rest of the scene is called a vehicle);
  and the **false-vehicle share**, of the above-ground returns whose voxel holds a vehicle class, the share
  outside every box (a false-discovery rate: what share of the vehicle calls is wrong; it rises when a frame has
  few annotated vehicles, so it is reported next to the rate, not as the target).
  Returns that project into an unannotated region (KITTI ``DontCare`` boxes: "regions in which objects have not
  been labeled", which the official KITTI evaluation also ignores) and lie in no box are not judged by either.

Counts are kept per frame so that a split's figures pool them (ratios of sums, not means of ratios).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from occle_core.data.kitti import KittiObjects, read_object_labels
from occle_core.data.sample import Sample, lidar_origin
from occle_core.geometry import Calib, VoxelGrid, free_space_mask
from occle_core.ground import GROUND_CLASSES, class_ids, fit_ground_plane
from occle_core.labels import ClassTable

VEHICLE_CLASSES = {
    "semantic_kitti": ("car", "truck", "other-vehicle"),
    "occ3d_nuscenes": ("car", "truck", "bus", "trailer", "construction_vehicle"),
}
#: KITTI object label types whose boxes are vehicles (Cyclist boxes hold a rider and are not used)
KITTI_VEHICLE_TYPES = ("Car", "Van", "Truck", "Tram")


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(N,) bool: points inside any box (grown by ``margin`` metres on every side).

    Args:
        points: (N, >=3) x y z.
        boxes: (M, 7) x, y, z (centre), l, w, h, yaw (about z; l along the heading).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    if len(boxes) == 0:
        return np.zeros(len(points), bool)
    rel = np.asarray(points, np.float64)[:, None, :3] - boxes[None, :, :3]  # (N, M, 3)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])  # (M,)
    local_x = rel[..., 0] * c + rel[..., 1] * s  # rotation by -yaw
    local_y = -rel[..., 0] * s + rel[..., 1] * c
    half = boxes[:, 3:6] / 2 + margin  # (M, 3)
    inside = (np.abs(local_x) <= half[:, 0]) & (np.abs(local_y) <= half[:, 1]) & (np.abs(rel[..., 2]) <= half[:, 2])
    return inside.any(axis=1)


def kitti_vehicle_boxes(
    objects: KittiObjects, T_cam_lidar: np.ndarray, types: Sequence[str] = KITTI_VEHICLE_TYPES
) -> np.ndarray:
    """Vehicle boxes of a KITTI object label file (read by :func:`occle_core.data.kitti.read_object_labels`) as
    (M, 7) LiDAR-frame x, y, z (centre), l, w, h, yaw.

    Label boxes live in the rectified camera frame (x right, y down, z forward; ``location`` the bottom centre;
    ``rotation_y`` the heading about y). ``T_cam_lidar`` (4, 4) maps the LiDAR frame to that camera frame
    (``R0_rect @ Tr_velo_to_cam``, :attr:`Calib.T_cam_lidar` of the KITTI readers).
    """
    keep = np.flatnonzero(np.isin(np.asarray(objects.type, dtype=object), list(types)))
    h, w, length = (objects.dimensions[keep, i] for i in range(3))
    ry, loc = objects.rotation_y[keep], objects.location[keep]
    centre = np.stack([loc[:, 0], loc[:, 1] - h / 2, loc[:, 2], np.ones(len(keep))], axis=1)  # (M, 4) camera
    inv = np.linalg.inv(np.asarray(T_cam_lidar, np.float64))
    centre_lidar = centre @ inv.T
    heading = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1) @ inv[:3, :3].T  # (M, 3)
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    return np.stack([*centre_lidar[:, :3].T, length, w, h, yaw], axis=1).reshape(-1, 7)


@dataclass
class ConsistencyFrame:
    """One frame to check: front image, scan and calibration in the grid frame, optional vehicle boxes.

    Attributes:
        image: (H, W, 3) uint8; points: (N, >=4) float32 in the grid frame; calib: the front camera.
        boxes: (M, 7) vehicle boxes (x, y, z centre, l, w, h, yaw) in the grid frame, or None (no annotation).
        origin: (3,) LiDAR position in the grid frame (the rays' start).
        unannotated: (K, 4) image regions without annotation (left, top, right, bottom pixels of ``image``; KITTI
            ``DontCare``), or None.
    """

    frame_id: str
    image: np.ndarray
    points: np.ndarray
    calib: Calib
    boxes: np.ndarray | None = None
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    unannotated: np.ndarray | None = None

    def unjudged(self) -> np.ndarray | None:
        """(N,) bool: returns that project into an :attr:`unannotated` region (None without regions)."""
        if self.unannotated is None or len(self.unannotated) == 0:
            return None
        uv, _, visible = self.calib.project(np.asarray(self.points, np.float64))
        r = np.asarray(self.unannotated, np.float64)  # (K, 4)
        u, v = uv[:, :1], uv[:, 1:]  # (N, 1)
        inside = (u >= r[:, 0]) & (u <= r[:, 2]) & (v >= r[:, 1]) & (v <= r[:, 3])  # (N, K)
        return visible & inside.any(axis=1)


@dataclass
class FrameConsistency:
    """Counts of one frame (or pooled over frames); the ratios are properties. Vehicle counts are None without
    boxes."""

    frame_id: str
    hit_voxels: int
    hit_predicted_occupied: int
    free_voxels: int
    free_predicted_occupied: int
    ground_returns: int
    ground_returns_ground_class: int
    voxels: int
    predicted_occupied: int
    observed_voxels: int
    observed_predicted_occupied: int
    box_returns: int | None = None
    box_returns_vehicle: int | None = None
    vehicle_returns: int | None = None
    vehicle_returns_outside_boxes: int | None = None
    outside_box_returns: int | None = None

    @property
    def hit_recall(self) -> float:
        return _ratio(self.hit_predicted_occupied, self.hit_voxels)

    @property
    def free_false_occupancy(self) -> float:
        return _ratio(self.free_predicted_occupied, self.free_voxels)

    @property
    def ground_consistency(self) -> float:
        return _ratio(self.ground_returns_ground_class, self.ground_returns)

    @property
    def occupied_share(self) -> float:
        return _ratio(self.predicted_occupied, self.voxels)

    @property
    def observed_occupied_share(self) -> float:
        """Predicted occupied share of the LiDAR-observed voxels."""
        return _ratio(self.observed_predicted_occupied, self.observed_voxels)

    @property
    def lidar_occupied_share(self) -> float:
        """Share of the LiDAR-observed voxels that hold returns."""
        return _ratio(self.hit_voxels, self.observed_voxels)

    @property
    def vehicle_recall(self) -> float | None:
        return None if self.box_returns is None else _ratio(self.box_returns_vehicle, self.box_returns)

    @property
    def false_vehicle_rate(self) -> float | None:
        """Of the judged above-ground returns outside every box, the share in a voxel of a vehicle class."""
        if self.outside_box_returns is None:
            return None
        return _ratio(self.vehicle_returns_outside_boxes, self.outside_box_returns)

    @property
    def false_vehicle_share(self) -> float | None:
        """Of the judged above-ground returns in a voxel of a vehicle class, the share outside every box."""
        return (
            None if self.vehicle_returns is None else _ratio(self.vehicle_returns_outside_boxes, self.vehicle_returns)
        )

    def metrics(self) -> dict[str, float | None]:
        """The ratios by name (NaN where a denominator is 0)."""
        return {name: getattr(self, name) for name in METRICS}


METRICS = (
    "hit_recall",
    "free_false_occupancy",
    "ground_consistency",
    "occupied_share",
    "observed_occupied_share",
    "lidar_occupied_share",
    "vehicle_recall",
    "false_vehicle_rate",
    "false_vehicle_share",
)


def _ratio(num: int | None, den: int | None) -> float:
    return float(num) / den if den else float("nan")


def frame_consistency(
    points: np.ndarray,
    labels: np.ndarray,
    grid: VoxelGrid,
    classes: ClassTable,
    boxes: np.ndarray | None = None,
    frame_id: str = "",
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    free_margin: float = 0.6,
    ground_tol: float = 0.2,
    above_ground: float = 0.3,
    box_margin: float = 0.1,
    plane: np.ndarray | None = None,
    unjudged: np.ndarray | None = None,
) -> FrameConsistency:
    """Consistency counts of one predicted grid with its scan (definitions in the module docstring).

    Args:
        points: (N, >=3) returns in the grid frame (rows with NaN/Inf are dropped).
        labels: (X, Y, Z) uint8 predicted classes of ``classes`` on ``grid``; ``classes.empty_index`` = free.
        boxes: optional (M, 7) vehicle boxes (x, y, z centre, l, w, h, yaw) in the grid frame.
        origin: (3,) sensor position the rays start from.
        free_margin: a voxel counts as free when a ray crosses it at least this far before its return.
        ground_tol: returns within this distance of the ground plane are ground returns.
        above_ground: returns higher than this above the plane are "above ground" (vehicle checks).
        box_margin: boxes are grown by this margin when testing returns against them.
        plane: (4,) ground plane ``n . x + d = 0`` (n up); None fits one with :func:`fit_ground_plane`.
        unjudged: optional (N,) bool per row of ``points``: returns in unannotated regions
            (:meth:`ConsistencyFrame.unjudged`); outside every box they count for neither vehicle figure.
    """
    labels = np.asarray(labels)
    if labels.shape != grid.shape:
        raise ValueError(f"labels must have the grid shape {grid.shape}, got {labels.shape}")
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, >=3), got {pts.shape}")
    finite = np.all(np.isfinite(pts[:, :3]), axis=1)
    if unjudged is not None and np.shape(unjudged) != (len(pts),):
        raise ValueError(f"unjudged must have one entry per point ({len(pts)}), got shape {np.shape(unjudged)}")
    pts = pts[finite, :3]
    occupied = (labels != classes.empty_index) & (labels != classes.ignore_index)  # (X, Y, Z)
    hit, _ = free_space_mask(grid, pts, origin)
    # rays shortened by free_margin: the voxels they cross lie at least free_margin before the return
    o = np.asarray(origin, np.float64)
    rng = np.linalg.norm(pts - o, axis=1)
    far = rng > free_margin
    short = o + (pts[far] - o) * ((rng[far] - free_margin) / rng[far])[:, None]
    short_end, crossed = free_space_mask(grid, short, origin)
    free = (crossed | short_end) & ~hit  # a shortened ray's end voxel holds a point free_margin before its return
    observed = hit | free

    plane = fit_ground_plane(pts) if plane is None else np.asarray(plane, np.float64)
    height = pts @ plane[:3] + plane[3]  # (N,) signed distance above the plane
    ijk, inside = grid.point_indices(pts)
    point_label = np.full(len(pts), classes.empty_index, np.int64)
    point_label[inside] = labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    ground = inside & (np.abs(height) <= ground_tol)
    is_ground_class = np.isin(point_label, class_ids(classes, GROUND_CLASSES[classes.name]))
    counts: dict[str, Any] = {
        "frame_id": frame_id,
        "hit_voxels": int(hit.sum()),
        "hit_predicted_occupied": int((hit & occupied).sum()),
        "free_voxels": int(free.sum()),
        "free_predicted_occupied": int((free & occupied).sum()),
        "ground_returns": int(ground.sum()),
        "ground_returns_ground_class": int((ground & is_ground_class).sum()),
        "voxels": grid.num_voxels,
        "predicted_occupied": int(occupied.sum()),
        "observed_voxels": int(observed.sum()),
        "observed_predicted_occupied": int((observed & occupied).sum()),
    }
    if boxes is not None:
        up = inside & (height > above_ground)
        in_box = points_in_boxes(pts, boxes, box_margin)
        judged = up if unjudged is None else up & (in_box | ~np.asarray(unjudged, bool)[finite])
        vehicle = np.isin(point_label, class_ids(classes, VEHICLE_CLASSES[classes.name]))
        counts["box_returns"] = int((up & in_box).sum())
        counts["box_returns_vehicle"] = int((up & in_box & vehicle).sum())
        counts["vehicle_returns"] = int((judged & vehicle).sum())
        counts["vehicle_returns_outside_boxes"] = int((judged & vehicle & ~in_box).sum())
        counts["outside_box_returns"] = int((judged & ~in_box).sum())
    return FrameConsistency(**counts)


def pool(frames: Sequence[FrameConsistency], frame_id: str = "all") -> FrameConsistency:
    """Counts summed over ``frames`` (vehicle counts over the frames that have boxes; None if none has)."""
    out: dict[str, Any] = {"frame_id": frame_id}
    for f in fields(FrameConsistency)[1:]:
        values = [getattr(fr, f.name) for fr in frames if getattr(fr, f.name) is not None]
        out[f.name] = int(sum(values)) if values else None
    return FrameConsistency(**out)


@dataclass
class ConsistencyReport:
    """Per-frame consistency and the pooled figures of a set of frames."""

    frames: list[FrameConsistency]

    @property
    def total(self) -> FrameConsistency:
        return pool(self.frames)

    def table(self) -> str:
        """Markdown table: one row per frame and the pooled row, ratios in percent (``-`` = undefined)."""
        head = "| frame | " + " | ".join(METRICS) + " |"
        rows = [head, "|---" * (len(METRICS) + 1) + "|"]
        for fr in [*self.frames, self.total]:
            cells = ["-" if v is None or np.isnan(v) else f"{100 * v:.1f}" for v in fr.metrics().values()]
            rows.append(f"| {fr.frame_id} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        """Counts and ratios of every frame and of the pool (NaN as null)."""

        def entry(fr: FrameConsistency) -> dict[str, Any]:
            ratios = {k: None if v is None or np.isnan(v) else v for k, v in fr.metrics().items()}
            return {**asdict(fr), **ratios}

        return {"frames": [entry(f) for f in self.frames], "total": entry(self.total)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ConsistencyReport:
        """The report of a :meth:`to_json` document (its per-frame counts)."""
        names = [f.name for f in fields(FrameConsistency)]
        return cls([FrameConsistency(**{n: entry[n] for n in names}) for entry in doc["frames"]])

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path


def consistency_frame(sample: Sample, extra_objects: KittiObjects | None = None) -> ConsistencyFrame:
    """The :class:`ConsistencyFrame` of a reader's :class:`Sample`: its front camera and scan, vehicle boxes and
    ``DontCare`` regions from a KITTI object ``extras["objects"]`` (None when the frame has no label file), the
    sensor origin from :func:`~occle_core.data.sample.lidar_origin` (default: the grid origin, the LiDAR frame of
    the KITTI readers).

    Args:
        extra_objects: objects added to the released ones (annotation gaps a user has labelled; a frame without
            a label file gets these alone).
    """
    objects = sample.extras.get("objects")
    if extra_objects is not None:
        objects = extra_objects if objects is None else objects.concat(extra_objects)
    boxes = unannotated = None
    if objects is not None:
        boxes = kitti_vehicle_boxes(objects, sample.calib.T_cam_lidar)
        unannotated = objects.bbox[np.asarray(objects.type, dtype=object) == "DontCare"]  # (K, 4) pixels
    return ConsistencyFrame(
        sample.frame_id, sample.image, sample.points, sample.calib, boxes, lidar_origin(sample), unannotated
    )


def supplemented_frame(sample: Sample, extra_labels: str | Path | None) -> ConsistencyFrame:
    """:func:`consistency_frame` with the objects of ``extra_labels/<frame>.txt`` added (a folder of KITTI
    ``label_2`` files for what the release leaves out, ``occle-eval --extra-labels``); a frame without a file there,
    or ``extra_labels`` None, gets its released objects only."""
    path = None if extra_labels is None else Path(extra_labels) / f"{Path(sample.frame_id).name}.txt"
    return consistency_frame(sample, read_object_labels(path) if path is not None and path.is_file() else None)


def consistency_report(predictor: Any, frames: Iterable[ConsistencyFrame], **options: Any) -> ConsistencyReport:
    """Run ``predictor`` (an :class:`occle_core.predictor.Predictor`) on ``frames`` and check each prediction.

    Args:
        frames: the frames (each with its own sensor origin).
        options: keyword arguments of :func:`frame_consistency` (margins, tolerances) other than ``origin``.
    """
    out = []
    for fr in frames:
        labels = predictor.predict(fr.image, fr.points, fr.calib)
        out.append(
            frame_consistency(
                fr.points,
                labels,
                predictor.grid,
                predictor.classes,
                fr.boxes,
                fr.frame_id,
                fr.origin,
                unjudged=fr.unjudged(),
                **options,
            )
        )
    return ConsistencyReport(out)
