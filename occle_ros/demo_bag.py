"""``occle-demo --bag BAG [--preset kitti|nuscenes]``: a recorded drive through ``occle_node`` over real DDS.

A preset is the node's own preset file ``config/preset_<name>.yaml`` (the cameras' topics and TF frames, the LiDAR
topic and frame of a converter's layout; picked from the bag's topics when not given), put in the checkpoint's
camera order. The bag is read once here (rosbags, any ROS version) for what the node and the summary need: the
LiDAR stamps (the frames played; each output carries its input cloud's stamp), every camera's first camera_info
P and first image, the first cloud (to time the model and pick the playback rate), and ``/tf_static``.

Extrinsics (plain pip environments have no tf2_ros): every camera <- LiDAR transform and, for a checkpoint whose
grid is the ego frame, the grid (``base_link``) <- LiDAR transform are chained from the bag's ``/tf_static`` (any
tree: both frames up to a common root) and handed to the node as parameters (``extrinsics.source: matrix``,
``extrinsics.grid_from_lidar``) in ``DIR/extrinsics_from_bag.yaml``. The node projects with the camera_info's
``P`` as it is: in a stereo rig's camera_info (KITTI's ``P_rect_02``) P already holds the camera's offset from
the rig's first camera (``P[0, 3] = fx * tx``), so each transform is taken to that reference camera (``tx``
removed) and the offset is not counted twice; nuScenes' P = [K | 0] leaves the TF camera frame as it is.
Without ground truth the summary has no IoU; the PNGs are bird's-eye views of received grids, and
``DIR/received.npz`` holds every received grid (``labels_<frame>``, (X, Y, Z) uint8) and bird's-eye view
(``bev_<frame>``, (X, Y) int8: 100 occupied, 0 free, -1 unknown).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from occle_core.geometry import Calib
from occle_ros.extrinsics import transform_matrix
from occle_ros.params import CameraParams


@dataclass(frozen=True)
class Preset:
    """The topics and frames of one bag layout (from ``config/preset_<name>.yaml``).

    Attributes:
        lidar_frame / grid_frame: TF frames ("" = the cloud's frame_id / the default of the checkpoint's grid).
        slop: the node's ``sync.slop`` for the layout (s): the largest stamp difference of one set of messages.
        intensity_scale: the node's ``intensity_scale`` for the layout (multiplier of the cloud's intensity).
    """

    name: str
    cameras: tuple[CameraParams, ...]
    points_topic: str
    lidar_frame: str
    grid_frame: str
    slop: float
    intensity_scale: float

    @property
    def topics(self) -> set[str]:
        """Every input topic of the layout."""
        return {t for c in self.cameras for t in (c.image_topic, c.info_topic)} | {self.points_topic}


def load_preset(name: str) -> Preset:
    """The preset of the node's parameter file ``config/preset_<name>.yaml``."""
    from occle_core.resources import config_path
    from occle_ros.params import camera_params, default_values, flatten

    doc = yaml.safe_load(config_path(f"preset_{name}.yaml").read_text()) or {}
    values: dict[str, Any] = {k: v for k, v in default_values().items() if k in ("sync.slop", "intensity_scale")}
    for section in doc.values():  # "/**" or the node's name
        values.update(flatten((section or {}).get("ros__parameters", {})))
    return Preset(
        name, camera_params(values), values["lidar_topic"], values.get("lidar_frame", ""), values.get("grid_frame", ""),
        float(values["sync.slop"]), float(values["intensity_scale"]),
    )  # fmt: skip


def detect_preset(topics: set[str]) -> str:
    """The preset whose topics are all in ``topics``; ValueError listing the presets when none fits."""
    from occle_ros.launcher import DATASETS

    for name in DATASETS:
        if load_preset(name).topics <= topics:
            return name
    raise ValueError(f"no preset fits the bag's topics {sorted(topics)}; presets: {', '.join(DATASETS)} (--preset)")


def chain(static: dict[str, tuple[str, np.ndarray]], target: str, source: str) -> np.ndarray:
    """(4, 4) T_target<-source through a TF tree ``{child: (parent, T_parent<-child)}``.

    Raises:
        ValueError: a frame not in the tree, or two frames without a common ancestor.
    """

    def to_root(frame: str) -> dict[str, np.ndarray]:  # ancestor -> T_ancestor<-frame, frame itself first
        out, T = {frame: np.eye(4)}, np.eye(4)
        while frame in static:
            frame, T_parent = static[frame]
            T = T_parent @ T
            out[frame] = T
        return out

    known = set(static) | {parent for parent, _ in static.values()}
    for frame in (target, source):
        if frame not in known:
            raise ValueError(f"frame {frame!r} is not in the bag's /tf_static (it has {sorted(known)})")
    up_target, up_source = to_root(target), to_root(source)
    common = next((f for f in up_source if f in up_target), None)
    if common is None:
        raise ValueError(f"/tf_static does not connect {target!r} and {source!r}")
    return np.linalg.inv(up_target[common]) @ up_source[common]


def reference_camera(T_cam_lidar: np.ndarray, P: np.ndarray) -> np.ndarray:
    """T_ref<-lidar for ``P``: the camera's stereo offset ``tx = P[0, 3] / P[0, 0]`` (ROS CameraInfo) removed."""
    shift = np.eye(4)
    shift[0, 3] = -P[0, 3] / P[0, 0]
    return shift @ T_cam_lidar


@dataclass
class CameraFacts:
    """One camera's first messages in a bag."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, decoded as the node decodes it
    P: np.ndarray  # (3, 4) of the first camera_info
    frame: str  # TF frame: the preset's, else the image's frame_id


@dataclass
class BagFacts:
    """What the demo reads from a bag (see the module docstring)."""

    cloud_stamps: list[int]
    cameras: list[CameraFacts]  # in the order of the cameras asked for
    points: np.ndarray  # (N, 4) float32, the first cloud, LiDAR frame
    lidar_frame: str  # the preset's, else the cloud's frame_id
    static: dict[str, tuple[str, np.ndarray]]  # child -> (parent, T_parent<-child)


def read_bag_facts(bag: Path, preset: Preset, cameras: tuple[CameraParams, ...] | None = None) -> BagFacts:
    """Read :class:`BagFacts` (rosbags; ROS 1 or ROS 2) for ``cameras`` (default: the preset's).

    Raises:
        ValueError: a preset topic with no message (the topic named).
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from occle_ros.bag_player import bag_path

    cameras = preset.cameras if cameras is None else cameras
    first: dict[str, Any] = {}
    stamps: list[int] = []
    static: dict[str, tuple[str, np.ndarray]] = {}
    wanted = {t for c in cameras for t in (c.image_topic, c.info_topic)} | {preset.points_topic, "/tf_static"}
    with AnyReader([bag_path(bag)], default_typestore=get_typestore(Stores.LATEST)) as reader:
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, _, raw in reader.messages(connections=conns):
            if conn.topic == "/tf_static":
                static.update(static_transforms(reader.deserialize(raw, conn.msgtype)))
                continue
            if conn.topic == preset.points_topic:
                msg = reader.deserialize(raw, conn.msgtype)
                stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
                first.setdefault(conn.topic, msg)
            elif conn.topic not in first:
                first[conn.topic] = (reader.deserialize(raw, conn.msgtype), conn.msgtype)
    for topic in sorted(wanted - {"/tf_static"}):
        if topic not in first:
            raise ValueError(f"bag {bag} has no message on {topic} (preset {preset.name} topics)")
    facts = []
    for cam in cameras:
        image, image_type = first[cam.image_topic]
        P = decode_projection(first[cam.info_topic][0])
        facts.append(CameraFacts(decode_image(image, image_type), P, cam.frame or image.header.frame_id))
    cloud = first[preset.points_topic]
    lidar_frame = preset.lidar_frame or cloud.header.frame_id
    return BagFacts(stamps, facts, decode_points(cloud), lidar_frame, static)


def static_transforms(msg: Any) -> dict[str, tuple[str, np.ndarray]]:
    """``{child: (parent, T_parent<-child)}`` of a rosbags-deserialised ``tf2_msgs/TFMessage``."""
    return {tf.child_frame_id: (tf.header.frame_id, transform_matrix(tf.transform)) for tf in msg.transforms}


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a rosbags-deserialised Image or CompressedImage (``msgtype`` its type name), decoded
    as the node decodes it."""
    from sensor_msgs.msg import CompressedImage, Image

    from occle_ros.bag_player import to_ros2_message
    from occle_ros.pipeline import image_rgb

    return image_rgb(to_ros2_message(msg, CompressedImage if msgtype.endswith("CompressedImage") else Image))


def decode_projection(msg: Any) -> np.ndarray:
    """(3, 4) P of a rosbags-deserialised CameraInfo (ConversionError naming the field when malformed)."""
    from sensor_msgs.msg import CameraInfo

    from occle_ros import msgs
    from occle_ros.bag_player import to_ros2_message

    return msgs.camera_info_projection(to_ros2_message(msg, CameraInfo))


def decode_points(msg: Any, intensity_scale: float = 1.0) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity (times ``intensity_scale``) of a rosbags-deserialised PointCloud2 (its own
    frame)."""
    from sensor_msgs.msg import PointCloud2

    from occle_ros import msgs
    from occle_ros.bag_player import to_ros2_message

    cloud = to_ros2_message(msg, PointCloud2)
    return np.asarray(msgs.pointcloud2_to_xyzi(cloud, intensity_scale=intensity_scale), np.float32)


def bag_extrinsics(facts: BagFacts, grid_kind: str, grid_frame: str = "") -> tuple[list[np.ndarray], np.ndarray]:
    """From ``/tf_static``: (4, 4) T_cam<-lidar per camera (to the reference camera of its P, see
    :func:`reference_camera`) and T_grid<-lidar (identity for a LiDAR grid; ``grid_frame`` or base_link <- LiDAR for
    an ego grid). Raises ValueError for a frame the tree lacks."""
    cams = [(c.frame, c.P) for c in facts.cameras]
    return static_extrinsics(facts.static, cams, facts.lidar_frame, grid_kind, grid_frame)


def static_extrinsics(
    static: dict[str, tuple[str, np.ndarray]], cameras: list[tuple[str, np.ndarray]], lidar_frame: str,
    grid_kind: str, grid_frame: str = "",
) -> tuple[list[np.ndarray], np.ndarray]:  # fmt: skip
    """:func:`bag_extrinsics` of a TF tree ``{child: (parent, T_parent<-child)}`` and the cameras' (TF frame,
    (3, 4) P)."""
    from occle_ros.extrinsics import EGO_FRAME

    T_cam = [reference_camera(chain(static, frame, lidar_frame), P) for frame, P in cameras]
    T_grid = np.eye(4) if grid_kind == "lidar" else chain(static, grid_frame or EGO_FRAME, lidar_frame)
    return T_cam, T_grid


def write_extrinsics_params(path: Path, T_cam_lidar: list[np.ndarray], T_grid_lidar: np.ndarray | None) -> None:
    """A node parameter file: ``extrinsics.source: matrix`` with the cameras' T_cam<-lidar (16 row-major values each,
    the node's camera order) and, when given, ``extrinsics.grid_from_lidar``."""
    ext: dict[str, Any] = {"source": "matrix", "matrix": [float(v) for T in T_cam_lidar for v in T.reshape(-1)]}
    if T_grid_lidar is not None:
        ext["grid_from_lidar"] = [float(v) for v in T_grid_lidar.reshape(-1)]
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"extrinsics": ext}}}))


def run_bag(args: Any, predictor: Any, ckpt: Path, out: Path, t_start: float) -> int:
    """``occle-demo --bag``: play ``args.bag`` through the node; returns the exit status."""
    from occle_core.render import render_bev, save_png
    from occle_ros.bag_player import BagError, bag_path
    from occle_ros.demo_run import fail, play_through_node, playback_rate, summary_line
    from occle_ros.launcher import parse_launch_args
    from occle_ros.params import StartupError, match_cameras
    from occle_ros.pipeline import to_grid

    try:
        bag = bag_path(Path(args.bag))
        preset = load_preset(args.preset or detect_preset(bag_topics(bag)))
        cameras = match_cameras(preset.cameras, predictor.camera_names)
        facts = read_bag_facts(bag, preset, cameras)
        T_cam, T_grid = bag_extrinsics(facts, predictor.grid_frame, preset.grid_frame)
    except (BagError, ValueError, StartupError) as exc:
        return fail(str(exc))
    params = out / "extrinsics_from_bag.yaml"  # the node's extrinsics
    write_extrinsics_params(params, T_cam, None if predictor.grid_frame == "lidar" else T_grid)
    T_lidar_grid = np.linalg.inv(T_grid)
    views = [(c.image, Calib(c.P, T @ T_lidar_grid, c.image.shape[:2])) for c, T in zip(facts.cameras, T_cam)]
    frames = [f"{i:06d}" for i in range(len(facts.cloud_stamps))]
    stamps = dict(zip(facts.cloud_stamps, frames))
    rate = args.rate if args.rate > 0 else playback_rate(predictor, views, to_grid(facts.points, T_grid), stamps)
    grid, classes = predictor.grid, predictor.classes
    launch = [f"bag:={bag}", "rviz:=false", f"rate:={rate:.4f}", f"checkpoint:={ckpt}", f"device:={args.device}",
              f"dataset:={preset.name}", f"params_file:={params}", "wait_subscribers:=120"]  # fmt: skip
    print(f"occle-demo: bag {bag}, preset {preset.name}, {len(cameras)} camera(s), {len(frames)} LiDAR frames",
          flush=True)  # fmt: skip
    try:
        run = play_through_node(parse_launch_args(launch), stamps, grid, classes.empty_index, len(frames), args.timeout)
    except RuntimeError as exc:
        return fail(str(exc))
    chosen = sorted(run.received)
    picks = sorted({chosen[int(round(i))] for i in np.linspace(0, len(chosen) - 1, min(args.renders, len(chosen)))})
    renders = [str(save_png(render_bev(run.received[f], classes, grid=grid), out / f"bev_{f}.png")) for f in picks]
    np.savez_compressed(out / "received.npz", **{f"labels_{f}": v for f, v in run.received.items()},
                        **{f"bev_{f}": v for f, v in run.bev.items()})  # fmt: skip
    line = summary_line(len(run.received), len(frames), run.diag)
    summary = {"bag": str(bag), "preset": preset.name, "cameras": [c.name for c in cameras],
               "frames_played": len(frames), "frames_received": len(run.received),
               "frames_with_markers": len(run.marker_frames), "playback_rate": rate, "renders": renders,
               "checkpoint": str(ckpt), "node_diagnostics": run.diag, "T_cam_lidar": [T.tolist() for T in T_cam],
               "T_grid_lidar": T_grid.tolist(), "wall_s": time.monotonic() - t_start}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"occle-demo: {line}; no ground truth in a bag; renders: {', '.join(renders)}; {summary['wall_s']:.0f} s")
    return 0


def bag_topics(bag: Path) -> set[str]:
    """The topics of a bag (any ROS version)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return {c.topic for c in reader.connections}
