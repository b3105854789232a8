"""A recorded bag (ROS 1 or ROS 2, read with rosbags) as a dataset of :class:`~occle_core.data.sample.Sample`.

One frame per LiDAR message of the preset's points topic (``frame_id`` = its index among the bag's clouds,
``000000``...): for every camera of the preset, the image whose header stamp is nearest the cloud's (within
``slop`` seconds, by default the preset's ``sync.slop``) and the camera_info nearest that image (within ``slop``);
a cloud lacking one of them is skipped (:attr:`BagFrames.skipped`). Points are decoded and moved into the
checkpoint's grid frame; each camera's ``Calib`` is the frame's camera_info ``P`` as it is with the camera <- grid
transform chained from the bag's ``/tf_static``, taken to the reference camera of ``P``
(:func:`occle_ros.demo_bag.reference_camera`), which is what the node is handed by ``occle-demo --bag``.
Decoding is the node's (:mod:`occle_ros.msgs`), the intensity times the preset's ``intensity_scale``.

The bag is read once to index the stamps (every message of the preset's topics is deserialised, images and clouds
are decoded only when a frame is served); a frame is then read back by its messages' bag times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from occle_core.data.sample import CameraView, Sample
from occle_core.geometry import Calib
from occle_ros.demo_bag import (
    Preset,
    decode_image,
    decode_points,
    decode_projection,
    static_extrinsics,
    static_transforms,
)
from occle_ros.params import CameraParams


@dataclass(frozen=True)
class _Stamps:
    """The messages of one topic in bag order: header stamps and bag (log) times, (M,) int64 ns each."""

    stamp: np.ndarray
    log: np.ndarray


def nearest(stamps: np.ndarray, queries: np.ndarray, slop_ns: int) -> np.ndarray:
    """(Q,) int64 index of the stamp nearest each query, -1 where none is within ``slop_ns``.

    Args:
        stamps: (M,) int64 ns, any order; queries: (Q,) int64 ns.
    """
    order = np.argsort(stamps, kind="stable")
    s = stamps[order]
    right = np.clip(np.searchsorted(s, queries), 0, len(s) - 1)
    left = np.clip(right - 1, 0, len(s) - 1)
    pick = np.where(np.abs(s[left] - queries) <= np.abs(s[right] - queries), left, right)
    out = order[pick]
    return np.where(np.abs(s[pick] - queries) <= slop_ns, out, -1)


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class BagFrames(Dataset):
    """Frames of a bag as :class:`Sample` (see the module docstring).

    Args:
        bag: a ROS 1 ``.bag`` file or a ROS 2 bag folder; preset: its topics and frames;
        cameras: the cameras to serve, the checkpoint's order (front first); grid_kind: ``"lidar"`` or ``"ego"``
        (the checkpoint's grid frame; ego: ``preset.grid_frame`` or base_link <- LiDAR from ``/tf_static``);
        slop: seconds between a cloud and an image, and an image and its camera_info (None: the preset's
            ``sync.slop``, as the node matches them); intensity_scale: multiplier of the clouds' intensity (None:
            the preset's ``intensity_scale``, as the node scales it).

    Raises:
        ValueError: a preset topic without messages, no cloud with every camera within the slop, or a frame the
            ``/tf_static`` tree lacks (each naming it); BagError: not a readable bag.
    """

    def __init__(
        self,
        bag: str | Path,
        preset: Preset,
        cameras: Sequence[CameraParams],
        grid_kind: str,
        slop: float | None = None,
        intensity_scale: float | None = None,
    ) -> None:
        from occle_ros.bag_player import bag_path

        self.bag, self.cameras, self.grid_kind = bag_path(Path(bag)), tuple(cameras), grid_kind
        self.points_topic = preset.points_topic
        self.intensity_scale = preset.intensity_scale if intensity_scale is None else float(intensity_scale)
        stamps, first, static = self._index()
        slop = preset.slop if slop is None else slop
        slop_ns = int(round(slop * 1e9))
        clouds = stamps[self.points_topic]
        picks = []  # per camera: (image index, info index) per cloud, -1 = none within the slop
        for cam in self.cameras:
            image = nearest(stamps[cam.image_topic].stamp, clouds.stamp, slop_ns)
            info = nearest(stamps[cam.info_topic].stamp, stamps[cam.image_topic].stamp[np.maximum(image, 0)], slop_ns)
            picks.append((image, np.where(image < 0, -1, info)))
        ok = np.all([(image >= 0) & (info >= 0) for image, info in picks], axis=0)
        self.skipped = int((~ok).sum())
        if not ok.any():
            raise ValueError(f"bag {self.bag}: no LiDAR message on {self.points_topic} has an image and camera_info of "
                             f"every camera within --slop {slop} s")  # fmt: skip
        #: per frame: (cloud index, [(image index, info index) per camera])
        self.frames = [(int(k), [(int(im[k]), int(inf[k])) for im, inf in picks]) for k in np.flatnonzero(ok)]
        self.stamps = stamps
        lidar_frame = preset.lidar_frame or first[self.points_topic].header.frame_id
        cams = [
            (cam.frame or first[cam.image_topic].header.frame_id, decode_projection(first[cam.info_topic]))
            for cam in self.cameras
        ]
        T_cam, self.T_grid_lidar = static_extrinsics(static, cams, lidar_frame, grid_kind, preset.grid_frame)
        T_lidar_grid = np.linalg.inv(self.T_grid_lidar)
        self.T_cam_grid = [T @ T_lidar_grid for T in T_cam]  # (4, 4) each

    def _topics(self) -> list[str]:
        return [self.points_topic, *(t for c in self.cameras for t in (c.image_topic, c.info_topic))]

    def _reader(self) -> Any:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        return AnyReader([self.bag], default_typestore=get_typestore(Stores.LATEST))

    def _index(self) -> tuple[dict[str, _Stamps], dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
        """(stamps per topic, first message per topic, the ``/tf_static`` tree) of one pass over the bag."""
        rows: dict[str, list[tuple[int, int]]] = {t: [] for t in self._topics()}
        first: dict[str, Any] = {}
        static: dict[str, tuple[str, np.ndarray]] = {}
        with self._reader() as reader:
            conns = [c for c in reader.connections if c.topic in rows or c.topic == "/tf_static"]
            for conn, log_ns, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == "/tf_static":
                    static.update(static_transforms(msg))
                    continue
                rows[conn.topic].append((_stamp_ns(msg), int(log_ns)))
                first.setdefault(conn.topic, msg)
        for topic, got in rows.items():
            if not got:
                raise ValueError(f"bag {self.bag} has no message on {topic} (preset topics)")
        return {t: _Stamps(*np.asarray(r, np.int64).T) for t, r in rows.items()}, first, static

    def __len__(self) -> int:
        return len(self.frames)

    def _message(self, reader: Any, topic: str, index: int) -> tuple[Any, str]:
        """The ``index``-th message of ``topic`` (deserialised) and its type name, read back by its bag time."""
        log, stamp = int(self.stamps[topic].log[index]), int(self.stamps[topic].stamp[index])
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns, start=log, stop=log + 1):
            msg = reader.deserialize(raw, conn.msgtype)
            if _stamp_ns(msg) == stamp:
                return msg, conn.msgtype
        raise ValueError(f"bag {self.bag}: message {index} of {topic} not found again at bag time {log} ns")

    def __getitem__(self, i: int) -> Sample:
        from occle_ros.pipeline import to_grid

        cloud, per_camera = self.frames[i]
        views = []
        with self._reader() as reader:
            cloud_msg = self._message(reader, self.points_topic, cloud)[0]
            points = decode_points(cloud_msg, self.intensity_scale)  # (N, 4) LiDAR frame
            for cam, (image, info), T in zip(self.cameras, per_camera, self.T_cam_grid):
                rgb = decode_image(*self._message(reader, cam.image_topic, image))
                P = decode_projection(self._message(reader, cam.info_topic, info)[0])
                views.append(CameraView(cam.name, rgb, Calib(P, T, rgb.shape[:2])))
        origin = tuple(float(v) for v in self.T_grid_lidar[:3, 3])  # the LiDAR in the grid frame: rays start there
        extras = {} if self.grid_kind == "lidar" else {"lidar_origin": origin}
        return Sample(
            f"{cloud:06d}", to_grid(points, self.T_grid_lidar), views, grid_frame=self.grid_kind,
            timestamp_us=int(self.stamps[self.points_topic].stamp[cloud]) // 1000, extras=extras,
        )  # fmt: skip
