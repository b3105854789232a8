"""The sensor receive fast path (issue 6): zero-copy CDR reading of PointCloud2 and Image (``occle_ros.cdr``), the
(N, 4) read-only view of ``conversions.pointcloud2_to_xyzi``, and the node's raw ``points`` / ``image``
subscriptions.

- the CDR reader gives the same message as rclpy (both byte orders, odd layouts) and keeps the points / pixels
  in the received bytes; every truncation or corruption is a ConversionError, never another exception;
- the fast decoder gives exactly what the general decoder gives (same cloud big endian), returns a read-only view
  without copying when it can, and a new array when rows are removed or values fixed;
- the node counts and logs undecodable cloud / image bytes (also sent over real DDS) and keeps processing good frames,
  whose labels equal ``Predictor.predict`` on the read-only view.
"""

from __future__ import annotations

import array
import re
import struct

import numpy as np
import pytest
from helpers_ros import STAMP, frame_messages, make_frame, node_params, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from occle_ros import msgs as ros_msgs
from occle_ros import node as occle_node
from occle_ros.msgs import cdr
from occle_ros.pipeline import Stream

F32 = PointField.FLOAT32


def _cloud(
    n: int = 50,
    point_step: int = 16,
    *,
    intensity: str = "intensity",
    intensity_type: str = "<f4",
    big: bool = False,
    height: int = 1,
    row_padding: int = 0,
    nan_rows: tuple[int, ...] = (),
    nan_intensity: tuple[int, ...] = (),
    seed: int = 0,
) -> tuple[PointCloud2, np.ndarray]:
    """A cloud with x, y, z float32 at 0/4/8, ``intensity`` at 12 and a uint16 ``ring`` after them when
    ``point_step`` leaves room; returns (message, the structured array it encodes)."""
    rng = np.random.default_rng(seed)
    names, formats, offsets = ["x", "y", "z", intensity], ["<f4", "<f4", "<f4", intensity_type], [0, 4, 8, 12]
    end = 12 + np.dtype(intensity_type).itemsize
    if point_step >= end + 2:
        names.append("ring")
        formats.append("<u2")
        offsets.append(end)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    arr = np.zeros(n, dtype)
    for axis in ("x", "y", "z"):
        arr[axis] = rng.normal(0, 20, n)
    arr[intensity] = rng.uniform(0, 200, n) if intensity_type[1] in "iu" else rng.uniform(0, 1, n)
    if "ring" in names:
        arr["ring"] = rng.integers(0, 64, n)
    for k in nan_rows:
        arr["xyz"[k % 3]][k] = (np.nan, np.inf, -np.inf)[k % 3]
    for k in nan_intensity:
        arr[intensity][k] = np.nan
    msg = ros_msgs.array_to_pointcloud2(arr, "velo", STAMP, height=height, is_bigendian=big, row_padding=row_padding)
    return msg, arr


def _same_message(a, b: PointCloud2) -> None:
    """``a`` (a RawPointCloud2 or PointCloud2) holds the same message as the rclpy message ``b``."""
    assert a.header.stamp.sec == b.header.stamp.sec and a.header.stamp.nanosec == b.header.stamp.nanosec
    assert a.header.frame_id == b.header.frame_id
    assert (a.height, a.width, a.point_step, a.row_step) == (b.height, b.width, b.point_step, b.row_step)
    assert (bool(a.is_bigendian), bool(a.is_dense)) == (bool(b.is_bigendian), bool(b.is_dense))
    assert [(f.name, f.offset, f.datatype, f.count) for f in a.fields] == [
        (f.name, f.offset, f.datatype, f.count) for f in b.fields
    ]
    assert bytes(a.data) == bytes(b.data)


# -- CDR reader ---------------------------------------------------------------------------------------------------


def _odd_clouds() -> list[PointCloud2]:
    organised, _ = _cloud(24, 22, height=4, row_padding=6, nan_rows=(3,))
    organised.is_dense = False
    empty, _ = _cloud(0)
    unicode, _ = _cloud(3, 32)
    unicode.header.frame_id = "lidar_ü_前"  # multi-byte UTF-8: the alignment after the string must still hold
    unicode.header.stamp.sec, unicode.header.stamp.nanosec = -5, 999_999_999
    many = PointCloud2(height=1, width=2, point_step=40, row_step=80, is_bigendian=True, data=bytes(range(80)))
    many.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT64, count=1),
        PointField(name="a", offset=8, datatype=PointField.INT8, count=3),  # odd sizes between the fields
        PointField(name="bb", offset=11, datatype=PointField.UINT8, count=1),
        PointField(name="", offset=12, datatype=PointField.FLOAT32, count=7),  # empty name: still readable here
    ]
    return [_cloud()[0], organised, empty, unicode, many, PointCloud2()]


@pytest.mark.parametrize("msg", _odd_clouds(), ids=["xyzi", "organised", "empty", "unicode", "fields", "default"])
def test_cdr_reader_equals_rclpy_and_does_not_copy_the_points(msg):
    raw = serialize_message(msg)
    got = cdr.deserialize_pointcloud2(raw)
    _same_message(got, deserialize_message(raw, PointCloud2))
    assert isinstance(got.data, memoryview) and got.data.readonly
    if len(got.data):
        assert np.shares_memory(np.frombuffer(got.data, np.uint8), np.frombuffer(raw, np.uint8))  # zero copy
    assert cdr.deserialize_pointcloud2(raw + b"\0\0\0").header.frame_id == msg.header.frame_id  # padding ignored


def test_cdr_reader_reads_big_endian_cdr():
    """Big-endian CDR (encapsulation 0x0000), written by rosbags' independent serializer."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    for msg in _odd_clouds():
        le = serialize_message(msg)
        be = bytes(store.serialize_cdr(store.deserialize_cdr(le, "sensor_msgs/msg/PointCloud2"),
                                       "sensor_msgs/msg/PointCloud2", little_endian=False))  # fmt: skip
        assert be[:2] == b"\x00\x00"
        _same_message(cdr.deserialize_pointcloud2(be), deserialize_message(le, PointCloud2))


def test_every_truncation_is_a_conversion_error():
    raw = serialize_message(_odd_clouds()[3])
    for size in range(len(raw)):
        with pytest.raises(ros_msgs.ConversionError, match="PointCloud2 CDR"):
            cdr.deserialize_pointcloud2(raw[:size])


def _patched(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value) :]


def test_corrupt_fields_name_what_is_wrong():
    msg, _ = _cloud(4)
    raw = serialize_message(msg)
    # layout: 4 encapsulation, 8 stamp, 4 + 5 "velo\0", 3 padding -> height at 24, width 28, fields length 32
    assert struct.unpack_from("<III", raw, 24) == (1, 4, 4)
    with pytest.raises(cdr.UnsupportedEncapsulationError, match=r"encapsulation 0x0003 is not supported"):
        cdr.deserialize_pointcloud2(_patched(raw, 0, b"\x00\x03"))
    with pytest.raises(ros_msgs.ConversionError, match=r"fields length 1000000 does not fit"):
        cdr.deserialize_pointcloud2(_patched(raw, 32, struct.pack("<I", 1_000_000)))
    with pytest.raises(ros_msgs.ConversionError, match=r"header.frame_id \(length 5\) is not NUL-terminated"):
        cdr.deserialize_pointcloud2(_patched(raw, 20, b"!"))
    with pytest.raises(ros_msgs.ConversionError, match=r"header.frame_id is not valid UTF-8"):
        cdr.deserialize_pointcloud2(_patched(raw, 16, b"\xff"))
    with pytest.raises(ros_msgs.ConversionError, match=r"message ends while reading header.frame_id"):
        cdr.deserialize_pointcloud2(_patched(raw, 12, struct.pack("<I", 2**31)))
    with pytest.raises(ros_msgs.ConversionError, match=r"message ends while reading data and is_dense"):
        cdr.deserialize_pointcloud2(_patched(raw, len(raw) - 1 - 64 - 4, struct.pack("<I", 65)))
    with pytest.raises(ros_msgs.ConversionError, match=r"is_dense is 2 \(a boolean: expected 0 or 1\)"):
        cdr.deserialize_pointcloud2(_patched(raw, len(raw) - 1, b"\x02"))
    assert cdr.deserialize_pointcloud2(raw).width == 4  # the original still reads


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_bytes_never_raise_anything_but_conversion_error(data):
    raw = bytearray(serialize_message(_cloud(6, 20)[0]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        msg = cdr.deserialize_pointcloud2(bytes(raw))
        pts = ros_msgs.pointcloud2_to_xyzi(msg)
    except ros_msgs.ConversionError:
        return
    assert pts.ndim == 2 and pts.shape[1] == 4 and pts.dtype == np.float32


def _images() -> list[Image]:
    rgb = np.random.default_rng(5).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    padded = ros_msgs.array_to_image(rgb, "bgr8", "cam", STAMP, step=9 * 3 + 5)  # row padding
    mono16 = ros_msgs.array_to_image(
        rgb[:, :, 0].astype(np.uint16) * 257, "mono16", "kamera_ü", STAMP, is_bigendian=True
    )
    odd = ros_msgs.array_to_image(rgb[:, :, :1].copy(), "mono8", "", STAMP)  # empty frame_id, odd-length encoding
    return [ros_msgs.array_to_image(rgb, "rgb8", "camera", STAMP), padded, mono16, odd, Image()]


@pytest.mark.parametrize("msg", _images(), ids=["rgb8", "bgr8_padded", "mono16_big", "mono8", "default"])
def test_cdr_image_reader_equals_rclpy(msg):
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    le = serialize_message(msg)
    be = bytes(store.serialize_cdr(store.deserialize_cdr(le, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image",
                                   little_endian=False))  # fmt: skip
    want = deserialize_message(le, Image)
    for raw in (le, be):
        got = cdr.deserialize_image(raw)
        assert got.header == want.header and bytes(got.data) == bytes(want.data)
        assert (got.height, got.width, got.encoding, got.is_bigendian, got.step) == (
            want.height, want.width, want.encoding, want.is_bigendian, want.step)  # fmt: skip
        if len(got.data):
            assert np.shares_memory(np.frombuffer(got.data, np.uint8), np.frombuffer(raw, np.uint8))
            rgb = ros_msgs.image_to_rgb(got)  # a new writable array, equal to the one of the rclpy message
            assert rgb.flags.writeable and not np.shares_memory(rgb, np.frombuffer(raw, np.uint8))
            np.testing.assert_array_equal(rgb, ros_msgs.image_to_rgb(want))
    for size in range(len(le)):
        with pytest.raises(ros_msgs.ConversionError, match="Image CDR"):
            cdr.deserialize_image(le[:size])


# -- decoder fast path ----------------------------------------------------------------------------------------


CASES = {
    "kitti": {},
    "step20": {"point_step": 20},
    "velodyne22_unaligned": {"point_step": 22},
    "step48_organised_padded": {"point_step": 48, "height": 5, "row_padding": 4},
    "nan_rows": {"nan_rows": (0, 7, 8, 49)},
    "nan_intensity": {"nan_intensity": (3, 4)},
    "both_strided": {"point_step": 32, "nan_rows": (1, 2, 3), "nan_intensity": (10,)},
    "name_i": {"intensity": "i"},
    "reflectivity_u16": {"intensity": "reflectivity", "intensity_type": "<u2", "point_step": 18},
    "no_intensity": {"intensity": "t"},
}


@pytest.mark.parametrize("scale", [1.0, 0.01, 1e38])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_decoder_equals_general_decoder(case, scale):
    """The little-endian cloud (fast path where the layout allows) decodes exactly as the same cloud big endian
    (always the general path), from an rclpy message and from the zero-copy CDR reader."""
    kw = CASES[case]
    msg, arr = _cloud(**kw)
    big, _ = _cloud(**kw, big=True)
    want = ros_msgs.pointcloud2_to_xyzi(big, intensity_scale=scale)  # (M, 4)
    assert want.flags.writeable and want.dtype == np.float32
    for m in (msg, cdr.deserialize_pointcloud2(serialize_message(msg))):
        got = ros_msgs.pointcloud2_to_xyzi(m, intensity_scale=scale)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32 and got.shape == want.shape
    finite = np.isfinite(arr["x"]) & np.isfinite(arr["y"]) & np.isfinite(arr["z"])
    assert len(want) == finite.sum() and np.isfinite(want).all()


@pytest.mark.parametrize("point_step", [16, 22, 32])
def test_dense_float_cloud_is_a_read_only_view_of_the_received_bytes(point_step):
    msg, arr = _cloud(20_000, point_step, seed=point_step)
    raw = serialize_message(msg)
    pts = ros_msgs.pointcloud2_to_xyzi(cdr.deserialize_pointcloud2(raw))
    assert pts.shape == (20_000, 4) and pts.strides == (point_step, 4)
    assert np.shares_memory(pts, np.frombuffer(raw, np.uint8))  # nothing copied
    assert not pts.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        pts[0, 0] = 1.0
    np.testing.assert_array_equal(pts, np.stack([arr["x"], arr["y"], arr["z"], arr["intensity"]], axis=1))
    # an rclpy message's writable array is protected as well: nothing writes into a message through the points
    from_msg = ros_msgs.pointcloud2_to_xyzi(msg)
    assert np.shares_memory(from_msg, np.frombuffer(msg.data, np.uint8)) and not from_msg.flags.writeable


@pytest.mark.parametrize(
    ("kw", "scale"), [({"nan_rows": (5,)}, 1.0), ({"nan_intensity": (5,)}, 1.0), ({}, 2.0), ({"point_step": 20}, 0.5)]
)
def test_rows_removed_or_values_changed_give_a_new_writable_array(kw, scale):
    msg, _ = _cloud(1000, **kw)
    raw = serialize_message(msg)
    pts = ros_msgs.pointcloud2_to_xyzi(cdr.deserialize_pointcloud2(raw), intensity_scale=scale)
    assert pts.flags.writeable and pts.flags.c_contiguous and pts.dtype == np.float32
    assert not np.shares_memory(pts, np.frombuffer(raw, np.uint8))


def test_finite_values_whose_sum_overflows_are_kept():
    """The quick finiteness test adds values; float32 overflow of finite values must not drop or copy rows."""
    for step in (16, 32):
        msg, arr = _cloud(20_000, step)
        data = np.frombuffer(bytearray(msg.data), np.uint8).copy()
        view = np.ndarray((20_000, 4), np.float32, buffer=data, strides=(step, 4))
        view[100:110, :3] = 3e38  # finite, but x + y + z (and their sum over rows) overflow
        msg.data = array.array("B", data.tobytes())
        pts = ros_msgs.pointcloud2_to_xyzi(msg)
        assert pts.shape == (20_000, 4) and not pts.flags.writeable  # still the view: nothing removed
        np.testing.assert_array_equal(pts[100:110, :3], 3e38 * np.ones((10, 3), np.float32))


def test_layout_errors_are_unchanged_on_the_fast_path():
    msg, _ = _cloud(10)
    msg.row_step = 200
    with pytest.raises(ros_msgs.ConversionError, match=r"PointCloud2.data has 160 bytes, expected row_step\*height"):
        ros_msgs.pointcloud2_to_xyzi(cdr.deserialize_pointcloud2(serialize_message(msg)))
    msg, _ = _cloud(10)
    msg.fields = [*msg.fields, PointField(name="bad", offset=0, datatype=42, count=1)]
    with pytest.raises(ros_msgs.ConversionError, match=r"field 'bad' has unknown datatype 42"):
        ros_msgs.pointcloud2_to_xyzi(cdr.deserialize_pointcloud2(serialize_message(msg)))
    msg, _ = _cloud(10)
    msg.fields = msg.fields[1:]
    with pytest.raises(ros_msgs.ConversionError, match=r"PointCloud2 lacks the 'x' field"):
        ros_msgs.pointcloud2_to_xyzi(cdr.deserialize_pointcloud2(serialize_message(msg)))


# -- node: raw subscription -----------------------------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level: str):
        return lambda text, **_: self.lines.append(f"{level}: {text}")


@pytest.fixture
def node(ros_module_context, checkpoint, predictor):
    n = occle_node.OccleNode(
        predictor=predictor, context=ros_module_context, parameter_overrides=node_params(checkpoint)
    )
    n.log = _Log()
    n.get_logger = lambda: n.log
    yield n
    n.destroy_node()


BAD_BYTES = {
    "empty": (b"", r"shorter than the 4-byte encapsulation header"),
    "truncated": (serialize_message(_cloud(10)[0])[:60], r"fields length 4 does not fit in the 24 bytes left"),
    "truncated_data": (serialize_message(_cloud(10)[0])[:-9], r"message ends while reading data and is_dense"),
    "garbage": (b"\x00\x01\x00\x00" + bytes(range(256)) * 4, r"PointCloud2 CDR: "),
    "unknown_encapsulation": (
        b"\x00\x0b\x00\x00" + b"\xff" * 40,
        r"0x000b is not .* rclpy could not read it",
    ),
}


@pytest.mark.ros
@pytest.mark.parametrize("case", list(BAD_BYTES))
def test_node_counts_logs_and_survives_bad_cloud_bytes(node, predictor, case):
    data, log = BAD_BYTES[case]
    node._on_raw(Stream.POINTS, data)
    s = node.statistics()
    assert s["rejected"] == 1 and s["rejected.cloud_invalid"] == 1 and s["received_points"] == 1
    assert len(node.log.lines) == 1 and node.log.lines[0].startswith(
        "warning: points message skipped (cloud_invalid): "
    )
    assert re.search(log, node.log.lines[0]), node.log.lines
    # a good set through the same callbacks is matched and processed, on the read-only view of the cloud bytes
    rgb, pts, calib = make_frame(1)
    image, info, cloud = frame_messages(rgb, pts, STAMP)
    node._on_msg(Stream.CAMERA_INFO, info)
    node._on_raw(Stream.IMAGE, serialize_message(image))
    node._on_raw(Stream.POINTS, serialize_message(cloud))
    assert wait_until(lambda: node.statistics()["processed"] == 1, 30.0), node.statistics()
    assert node.statistics()["rejected"] == 1


@pytest.mark.ros
def test_node_counts_bad_image_bytes_as_image_invalid(node):
    raw = serialize_message(_images()[0])
    node._on_raw(Stream.IMAGE, raw[:-3])
    node._on_raw(Stream.IMAGE, _patched(raw, 16, b"\xff"))  # frame_id not UTF-8
    s = node.statistics()
    assert s["rejected"] == 2 and s["rejected.image_invalid"] == 2 and s["received_image"] == 2
    assert [line.split(": ")[1] for line in node.log.lines] == ["image message skipped (image_invalid)"] * 2
    assert "Image CDR: message ends while reading data" in node.log.lines[0]
    assert "Image CDR: header.frame_id is not valid UTF-8" in node.log.lines[1]
    node._on_raw(Stream.IMAGE, raw)  # a good one reaches the synchroniser
    assert node.statistics()["received_image"] == 3 and node._sync.pending()[0] == 1


@pytest.mark.ros
def test_node_reads_other_encapsulations_through_rclpy(node):
    """Bytes in an encapsulation the CDR reader does not handle go to rclpy's deserialiser (Fast CDR reads these
    XCDR2 / parameter-list kinds of a plain struct like CDR), so the node accepts what it accepted before."""
    rgb, pts, _ = make_frame(4)
    image, info, cloud = frame_messages(rgb, pts, STAMP)
    raw = serialize_message(cloud)
    with pytest.raises(cdr.UnsupportedEncapsulationError):
        cdr.deserialize_pointcloud2(b"\x00\x07" + raw[2:])
    node._on_msg(Stream.CAMERA_INFO, info)
    node._on_msg(Stream.IMAGE, image)
    node._on_raw(Stream.POINTS, b"\x00\x07" + raw[2:])
    assert wait_until(lambda: node.statistics()["processed"] == 1, 30.0), node.statistics()
    assert node.statistics()["rejected"] == 0 and node.log.lines == []


@pytest.mark.ros
def test_node_frame_from_raw_bytes_equals_predictor(node, predictor):
    rgb, pts, calib = make_frame(2)
    image, info, cloud = frame_messages(rgb, pts, STAMP)
    raw_cloud = cdr.deserialize_pointcloud2(serialize_message(cloud))
    labels = node.handle_frame(image, info, raw_cloud)
    assert labels is not None and node.statistics()["processed"] == 1
    np.testing.assert_array_equal(labels, predictor.predict(rgb, pts, calib))
    view = ros_msgs.pointcloud2_to_xyzi(raw_cloud)
    assert not view.flags.writeable
    before = view.copy()
    predictor.predict(rgb, view, calib)  # the predictor takes the read-only view and writes nothing into it
    np.testing.assert_array_equal(view, before)


@pytest.mark.ros
def test_bad_cloud_bytes_over_dds_are_counted_and_good_frames_still_flow(ros_context, checkpoint, predictor):
    """Real DDS: undecodable bytes published on ``points`` reach the raw subscription, are counted, and the
    node goes on processing the next complete frame."""
    from helpers_ros import Spinner

    node = occle_node.OccleNode(predictor=predictor, context=ros_context, parameter_overrides=node_params(checkpoint))
    io = Node("fastpath_io", context=ros_context)
    pubs = {
        name: io.create_publisher(t, name, qos_profile_sensor_data)
        for name, t in (("image", Image), ("camera_info", CameraInfo), ("points", PointCloud2))
    }
    spin = Spinner(ros_context, node, io)
    try:
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 20.0)
        rgb, pts, _ = make_frame(3)
        image, info, cloud = frame_messages(rgb, pts, STAMP)
        done = False
        for k in range(100):  # best effort: repeat (new stamps) until one bad cloud and one frame got through
            pubs["points"].publish(b"\x00\x01\x00\x00" + b"\xff" * 40)  # publishers accept serialized bytes
            stamp = STAMP + k * 100_000_000
            for m in (image, info, cloud):
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            pubs["camera_info"].publish(info)
            pubs["image"].publish(image)
            pubs["points"].publish(cloud)
            if wait_until(lambda: node.statistics()["processed"] >= 1, 0.5):
                done = node.statistics()["rejected.cloud_invalid"] >= 1
                if done:
                    break
        s = node.statistics()
        assert done, s
        assert s["rejected"] == s["rejected.cloud_invalid"]  # nothing else was rejected
    finally:
        spin.close()
