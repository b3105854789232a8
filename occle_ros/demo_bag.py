"""``occle-demo --bag BAG [--preset kitti|nuscenes]``: a recorded drive through ``occle_node`` over real DDS.

The bag is read once here (rosbags, any ROS version) for what the node and the summary need: the LiDAR stamps (the
frames played; each output carries its input cloud's stamp), the first camera_info's P, the first image and cloud
(to time the model and pick the playback rate), and ``/tf_static``. A preset names the topics and frames of a
converter's layout (:data:`PRESETS`; picked from the bag's topics when not given).

Extrinsics: the camera <- LiDAR transform is chained from the bag's ``/tf_static`` (any tree: both frames up to a
common root). The node projects with the camera_info's ``P``; in a stereo rig's camera_info (KITTI's
``P_rect_02``) P already holds the camera's offset from the rig's first camera (``P[0, 3] = fx * tx``), so the
transform is taken to that reference camera (``tx`` removed) before it is handed to the node as a calibration file.
Without ground truth the summary has no IoU; the PNGs are bird's-eye views of received grids.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from occle_core.geometry import Calib


@dataclass(frozen=True)
class Preset:
    """The topics and frames of one bag layout.

    Attributes:
        params_file: a node parameter file of the package's ``config/`` this layout needs ("" = none).
    """

    image_topic: str
    camera_info_topic: str
    points_topic: str
    camera_frame: str
    lidar_frame: str
    params_file: str = ""


PRESETS = {
    # tomas789/kitti2bag (ROS 1) and occle-kitti2bag
    "kitti": Preset(
        "/kitti/camera_color_left/image_raw",
        "/kitti/camera_color_left/camera_info",
        "/kitti/velo/pointcloud",
        "camera_color_left",
        "velo_link",
    ),  # fmt: skip
    # foxglove nuscenes2mcap / occle-nuscenes2bag; needs the node's CompressedImage, multi-camera, ego-grid support
    "nuscenes": Preset(
        "/CAM_FRONT/image_rect_compressed",
        "/CAM_FRONT/camera_info",
        "/LIDAR_TOP",
        "CAM_FRONT",
        "LIDAR_TOP",
        "preset_nuscenes.yaml",
    ),  # fmt: skip
}


def detect_preset(topics: set[str]) -> str:
    """The preset whose three topics are all in ``topics``; ValueError listing the presets when none fits."""
    for name, p in PRESETS.items():
        if {p.image_topic, p.camera_info_topic, p.points_topic} <= topics:
            return name
    raise ValueError(f"no preset fits the bag's topics {sorted(topics)}; presets: {', '.join(PRESETS)} (--preset)")


def _pose(tf: Any) -> np.ndarray:
    """(4, 4) T_parent<-child of a rosbags TransformStamped (any ROS version)."""
    from transforms3d.quaternions import quat2mat

    r, t = tf.transform.rotation, tf.transform.translation
    T = np.eye(4)
    T[:3, :3] = quat2mat([r.w, r.x, r.y, r.z])
    T[:3, 3] = t.x, t.y, t.z
    return T


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
class BagFacts:
    """What the demo reads from a bag (see the module docstring)."""

    cloud_stamps: list[int]
    image: np.ndarray  # (H, W, 3) uint8 RGB, the first one
    points: np.ndarray  # (N, 4) float32, the first cloud
    P: np.ndarray  # (3, 4) of the first camera_info
    static: dict[str, tuple[str, np.ndarray]]  # child -> (parent, T_parent<-child)


def read_bag_facts(bag: Path, preset: Preset) -> BagFacts:
    """Read :class:`BagFacts` (rosbags; ROS 1 or ROS 2).

    Raises:
        ValueError: a preset topic with no message (the topic named).
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from occle_ros import msgs
    from occle_ros.bag_player import bag_path, to_ros2_message

    first: dict[str, Any] = {}
    stamps: list[int] = []
    static: dict[str, tuple[str, np.ndarray]] = {}
    wanted = {preset.image_topic, preset.camera_info_topic, preset.points_topic, "/tf_static"}
    with AnyReader([bag_path(bag)], default_typestore=get_typestore(Stores.LATEST)) as reader:
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, _, raw in reader.messages(connections=conns):
            if conn.topic == "/tf_static":
                msg = reader.deserialize(raw, conn.msgtype)
                static.update({tf.child_frame_id: (tf.header.frame_id, _pose(tf)) for tf in msg.transforms})
                continue
            if conn.topic == preset.points_topic:
                msg = reader.deserialize(raw, conn.msgtype)
                stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
                first.setdefault(conn.topic, msg)
            elif conn.topic not in first:
                first[conn.topic] = (reader.deserialize(raw, conn.msgtype), conn.msgtype)
    for topic in (preset.image_topic, preset.camera_info_topic, preset.points_topic):
        if topic not in first:
            raise ValueError(f"bag {bag} has no message on {topic} (preset topics of this layout)")
    image, image_type = first[preset.image_topic]
    if image_type.endswith("CompressedImage"):
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(bytes(image.data))) as im:
            rgb = np.asarray(im.convert("RGB"))
    else:
        rgb = msgs.image_to_rgb(to_ros2_message(image, Image))
    info = to_ros2_message(first[preset.camera_info_topic][0], CameraInfo)
    points = msgs.pointcloud2_to_xyzi(to_ros2_message(first[preset.points_topic], PointCloud2))
    return BagFacts(stamps, rgb, np.asarray(points, np.float32), msgs.camera_info_projection(info), static)


def run_bag(args: Any, predictor: Any, ckpt: Path, out: Path, t_start: float) -> int:
    """``occle-demo --bag``: play ``args.bag`` through the node; returns the exit status."""
    from occle_core.geometry import write_kitti_calib
    from occle_core.render import render_bev, save_png
    from occle_core.resources import config_path
    from occle_ros.bag_player import BagError, bag_path
    from occle_ros.demo_run import fail, play_through_node, playback_rate, summary_line
    from occle_ros.launcher import parse_launch_args

    try:
        bag = bag_path(Path(args.bag))
        preset_name = args.preset or detect_preset(_topics(bag))
        preset = PRESETS[preset_name]
        facts = read_bag_facts(bag, preset)
        T = reference_camera(chain(facts.static, preset.camera_frame, preset.lidar_frame), facts.P)
    except (BagError, ValueError) as exc:
        return fail(str(exc))
    try:
        params = str(config_path(preset.params_file)) if preset.params_file else ""
    except FileNotFoundError as exc:
        return fail(f"preset {preset_name}: {exc} (this build's node lacks the inputs of that layout)")
    calib = Calib(facts.P, T, facts.image.shape[:2])
    calib_file = out / "calib_from_bag.txt"  # the node's extrinsics (P2 and Tr lines)
    write_kitti_calib(calib_file, calib)
    frames = [f"{i:06d}" for i in range(len(facts.cloud_stamps))]
    stamps = dict(zip(facts.cloud_stamps, frames))
    rate = args.rate if args.rate > 0 else playback_rate(predictor, facts.image, facts.points, calib, stamps)
    grid, classes = predictor.grid, predictor.classes
    launch = [f"bag:={bag}", "rviz:=false", f"rate:={rate:.4f}", f"checkpoint:={ckpt}", f"device:={args.device}",
              f"calib_file:={calib_file}", f"image_topic:={preset.image_topic}",
              f"camera_info_topic:={preset.camera_info_topic}", f"points_topic:={preset.points_topic}",
              "wait_subscribers:=120"] + ([f"params_file:={params}"] if params else [])  # fmt: skip
    print(f"occle-demo: bag {bag}, preset {preset_name}, {len(frames)} LiDAR frames", flush=True)
    try:
        run = play_through_node(parse_launch_args(launch), stamps, grid, classes.empty_index, len(frames), args.timeout)
    except RuntimeError as exc:
        return fail(str(exc))
    chosen = sorted(run.received)
    picks = sorted({chosen[int(round(i))] for i in np.linspace(0, len(chosen) - 1, min(args.renders, len(chosen)))})
    renders = [str(save_png(render_bev(run.received[f], classes, grid=grid), out / f"bev_{f}.png")) for f in picks]
    line = summary_line(len(run.received), len(frames), run.diag)
    summary = {"bag": str(bag), "preset": preset_name, "frames_played": len(frames),
               "frames_received": len(run.received), "frames_with_markers": len(run.marker_frames),
               "playback_rate": rate, "renders": renders, "checkpoint": str(ckpt), "node_diagnostics": run.diag,
               "T_cam_lidar": T.tolist(), "wall_s": time.monotonic() - t_start}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"occle-demo: {line}; no ground truth in a bag; renders: {', '.join(renders)}; {summary['wall_s']:.0f} s")
    return 0


def _topics(bag: Path) -> set[str]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return {c.topic for c in reader.connections}
