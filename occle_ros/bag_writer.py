"""Writing ROS 1 (``.bag``) and ROS 2 (mcap / sqlite3 folder) bags with rosbags, no ROS installation needed.

:class:`BagWriter` opens one bag, builds the sensor messages of the bag's ROS version (the typestore of ROS 1
Noetic or of ROS 2; field names differ: CameraInfo ``K`` / ``k``, ``header.seq`` only in ROS 1), creates one
connection per topic on first use and serialises each message the bag's way (ROS 1 or CDR). The converters
(``occle-kitti2bag``, ``occle-nuscenes2bag``) write through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transforms3d.quaternions import mat2quat

#: ROS 1 Noetic's rosbags typestore has no tf2_msgs; this is its definition (md5 94810edda583a504dfda3829e70d7eec)
TF_MESSAGE_ROS1 = "geometry_msgs/TransformStamped[] transforms"
FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32


class BagWriter:
    """One output bag; use as a context manager.

    Args:
        out: ROS 1: the ``.bag`` file; ROS 2: the bag folder (must not exist).
        ros1: write a ROS 1 bag (typestore ROS1_NOETIC, ROS 1 serialisation).
        storage: ROS 2 storage plugin, ``mcap`` or ``sqlite3``.
        distro: ROS 2 typestore whose message definitions are recorded (``ros2_humble``, ``latest``, ...).

    Raises:
        FileExistsError: ``out`` exists.
    """

    def __init__(self, out: str | Path, ros1: bool = False, storage: str = "mcap", distro: str = "latest") -> None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        self.out, self.ros1 = Path(out), ros1
        if self.out.exists():
            raise FileExistsError(f"output bag {self.out} already exists")
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
        self.store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores(distro))
        if ros1:
            self.store.register(get_types_from_msg(TF_MESSAGE_ROS1, "tf2_msgs/msg/TFMessage"))
        self.t = self.store.types
        self.storage = storage
        self._writer: Any = None
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        if self.ros1:
            from rosbags.rosbag1 import Writer

            self._writer = Writer(self.out)
        else:
            from rosbags.rosbag2 import Writer
            from rosbags.rosbag2.enums import StoragePlugin

            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer(self.out, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Write ``msg`` (a message of :attr:`t`) on ``topic`` with the bag time ``stamp_ns``."""
        msgtype = msg.__msgtype__
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._conns[topic] = self._connect(topic, msgtype)
        data = self.store.serialize_ros1(msg, msgtype) if self.ros1 else self.store.serialize_cdr(msg, msgtype)
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def _connect(self, topic: str, msgtype: str) -> Any:
        if self.ros1 or topic != "/tf_static":
            return self._writer.add_connection(topic, msgtype, typestore=self.store)
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        zero = QosTime(0, 0)
        latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, zero, zero,
                      QosLiveliness.AUTOMATIC, zero, False)  # fmt: skip  # what ros2 bag records for /tf_static
        return self._writer.add_connection(topic, msgtype, typestore=self.store, offered_qos_profiles=[latched])

    # -- message builders (of this bag's ROS version) ------------------------------------------------------------

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        """std_msgs/Header (``seq`` 0 in ROS 1, as ``rosbag.Bag.write`` leaves it)."""
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        if self.ros1:
            return self.t["std_msgs/msg/Header"](seq=0, stamp=stamp, frame_id=frame_id)
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def image(self, pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
        """sensor_msgs/Image of an (H, W, C) uint8 array (``encoding`` rgb8, bgr8, mono8, ...)."""
        arr = np.ascontiguousarray(pixels, np.uint8)
        h, w = arr.shape[:2]
        step = arr.strides[0]
        return self.t["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
            data=arr.reshape(-1),
        )  # fmt: skip

    def compressed_image(self, data: bytes, fmt: str, stamp_ns: int, frame_id: str) -> Any:
        """sensor_msgs/CompressedImage holding ``data`` as it is (e.g. the bytes of a JPEG file, ``fmt`` jpeg)."""
        return self.t["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(data, np.uint8)
        )

    def camera_info(
        self,
        K: np.ndarray,
        P: np.ndarray,
        image_size: tuple[int, int],
        stamp_ns: int,
        frame_id: str,
        D: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
        R: np.ndarray | None = None,
    ) -> Any:
        """sensor_msgs/CameraInfo (plumb_bob) of a (3, 3) K, a (3, 4) P, ``image_size`` (H, W), D and R (identity)."""
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        arrays = {
            "d": np.asarray(D, np.float64).reshape(-1),
            "k": np.asarray(K, np.float64).reshape(9),
            "r": (np.eye(3) if R is None else np.asarray(R, np.float64)).reshape(9),
            "p": np.asarray(P, np.float64).reshape(12),
        }
        if self.ros1:
            arrays = {k.upper(): v for k, v in arrays.items()}
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id), height=int(image_size[0]), width=int(image_size[1]),
            distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi, **arrays,
        )  # fmt: skip

    def pointcloud(self, points: np.ndarray, names: Sequence[str], stamp_ns: int, frame_id: str) -> Any:
        """sensor_msgs/PointCloud2 (height 1, dense) of (N, len(names)) float32 columns, one FLOAT32 field each."""
        pts = np.ascontiguousarray(points, "<f4")  # (N, C)
        if pts.ndim != 2 or pts.shape[1] != len(names):
            raise ValueError(f"points must be (N, {len(names)}) for fields {list(names)}, got {pts.shape}")
        pf = self.t["sensor_msgs/msg/PointField"]
        fields = [pf(name=n, offset=4 * i, datatype=FLOAT32, count=1) for i, n in enumerate(names)]
        step = 4 * len(names)
        return self.t["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, frame_id), height=1, width=pts.shape[0], fields=fields, is_bigendian=False,
            point_step=step, row_step=step * pts.shape[0], data=pts.view(np.uint8).reshape(-1), is_dense=True,
        )  # fmt: skip

    def transform(self, T: np.ndarray, stamp_ns: int, parent: str, child: str) -> Any:
        """geometry_msgs/TransformStamped: the pose of ``child`` in ``parent`` (maps child points to parent)."""
        T = np.asarray(T, np.float64)
        q = mat2quat(T[:3, :3])  # (w, x, y, z)
        t = self.t
        tr = t["geometry_msgs/msg/Transform"](
            translation=t["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=t["geometry_msgs/msg/Quaternion"](x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0])),
        )
        return t["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=tr
        )

    def tf(self, transforms: Sequence[tuple[str, str, np.ndarray]], stamp_ns: int) -> Any:
        """tf2_msgs/TFMessage of ``(parent, child, T_parent<-child)`` triples, all stamped ``stamp_ns``."""
        return self.t["tf2_msgs/msg/TFMessage"](
            transforms=[self.transform(T, stamp_ns, parent, child) for parent, child, T in transforms]
        )
