"""occle_ros.conversions: exact round trips for every supported layout/encoding, clear errors, fast markers."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from visualization_msgs.msg import Marker, MarkerArray

from occle_core.geometry import SEMANTIC_KITTI_GRID, VoxelGrid
from occle_core.labels import class_table
from occle_ros import msgs as ros_msgs
from occle_ros import readback

CLASSES = class_table("semantic_kitti")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"]


# ------------------------------------------------------------------------------------------------ PointCloud2


@st.composite
def cloud_layouts(draw):
    """A random structured dtype: random field order, types, counts, gaps and trailing padding."""
    n_fields = draw(st.integers(1, 6))
    names = draw(st.permutations(["x", "y", "z", "intensity", "ring", "t", "normal", "label"]))[:n_fields]
    offset, names_out, formats, offsets = 0, [], [], []
    for name in names:
        code = draw(st.sampled_from(TYPES))
        count = draw(st.integers(1, 3))
        offset += draw(st.integers(0, 5))  # unaligned gaps on purpose
        base = np.dtype(code)
        names_out.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
        offset += base.itemsize * count
    itemsize = offset + draw(st.integers(0, 7))
    dtype = np.dtype({"names": names_out, "formats": formats, "offsets": offsets, "itemsize": itemsize})
    return dtype, draw(st.integers(1, 3)), draw(st.integers(0, 4)), draw(st.integers(0, 9)), draw(st.booleans())


def _random_array(dtype: np.dtype, n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).copy()


def _same_fields(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype.names == b.dtype.names
    for name in a.dtype.names:
        x, y = a[name], b[name]
        native = x.dtype.base.newbyteorder("=")
        assert x.shape == y.shape
        assert x.astype(native).tobytes() == y.astype(native).tobytes(), name  # bit exact (NaN payloads too)


@FAST
@given(layout=cloud_layouts(), seed=st.integers(0, 2**31 - 1))
def test_pointcloud2_round_trip_any_layout(layout, seed):
    dtype, height, width, row_padding, big = layout
    arr = _random_array(dtype, height * width, seed)
    msg = ros_msgs.array_to_pointcloud2(arr, "lidar", 5, height=height, is_bigendian=big, row_padding=row_padding)
    assert msg.point_step == dtype.itemsize and msg.row_step == width * dtype.itemsize + row_padding
    assert len(msg.data) == msg.row_step * msg.height
    wire = deserialize_message(serialize_message(msg), PointCloud2)  # through the real CDR encoding
    _same_fields(ros_msgs.pointcloud2_to_array(wire), arr)


@FAST
@given(layout=cloud_layouts(), seed=st.integers(0, 2**31 - 1))
def test_xyzi_decoding_matches_fields(layout, seed):
    dtype, height, width, row_padding, big = layout
    arr = _random_array(dtype, height * width, seed)
    msg = ros_msgs.array_to_pointcloud2(arr, height=height, is_bigendian=big, row_padding=row_padding)
    names = dtype.names
    if not all(a in names for a in "xyz"):
        missing = next(a for a in "xyz" if a not in names)
        with pytest.raises(ros_msgs.ConversionError, match=f"'{missing}'"):
            ros_msgs.pointcloud2_to_xyzi(msg)
        return
    out = ros_msgs.pointcloud2_to_xyzi(msg)

    def col(name):
        c = arr[name]
        return (c[:, 0] if c.ndim > 1 else c).astype(np.float32)

    with np.errstate(all="ignore"):
        exp = np.stack(
            [col("x"), col("y"), col("z"), col("intensity") if "intensity" in names else np.zeros(len(arr))], axis=1
        ).astype(np.float32)
    exp = exp[np.isfinite(exp[:, :3]).all(axis=1)]
    exp[~np.isfinite(exp[:, 3]), 3] = 0
    assert out.dtype == np.float32 and out.shape == exp.shape
    np.testing.assert_array_equal(out, exp)


def test_xyzi_filters_nan_and_inf_and_defaults_intensity():
    pts = np.array([[1, 2, 3], [np.nan, 0, 0], [0, np.inf, 0], [4, 5, -np.inf], [7, 8, 9]], np.float32)
    arr = np.zeros(5, np.dtype([("z", "<f4"), ("y", "<f4"), ("x", "<f4")]))  # unusual order
    arr["x"], arr["y"], arr["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    out = ros_msgs.pointcloud2_to_xyzi(ros_msgs.array_to_pointcloud2(arr))
    np.testing.assert_array_equal(out, [[1, 2, 3, 0], [7, 8, 9, 0]])


def test_xyzi_big_endian_float64_and_count_fields():
    dt = np.dtype({"names": ["pad", "xyz_unused", "x", "y", "z", "intensity"],
                   "formats": ["u1", ("f4", (3,)), "f8", "f8", "f8", "u2"], "offsets": [0, 4, 16, 24, 32, 40],
                   "itemsize": 48})  # fmt: skip
    arr = np.zeros(3, dt)
    arr["x"], arr["y"], arr["z"], arr["intensity"] = [1.5, 2, 3], [-1, 0, 1], [0.25, 0.5, 0.75], [10, 20, 30]
    msg = ros_msgs.array_to_pointcloud2(arr, is_bigendian=True)
    out = ros_msgs.pointcloud2_to_xyzi(msg, intensity_scale=0.1)
    np.testing.assert_allclose(out, np.stack([arr["x"], arr["y"], arr["z"], arr["intensity"] * 0.1], 1), rtol=1e-6)


def test_xyzi_round_trip_exact():
    pts = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    np.testing.assert_array_equal(ros_msgs.pointcloud2_to_xyzi(ros_msgs.xyzi_to_pointcloud2(pts, "v", 3)), pts)
    assert ros_msgs.pointcloud2_to_xyzi(ros_msgs.xyzi_to_pointcloud2(np.zeros((0, 4), np.float32))).shape == (0, 4)


def _cloud(fields, point_step=16, width=2, data=None, row_step=None, height=1):
    msg = PointCloud2(height=height, width=width, point_step=point_step)
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    msg.row_step = point_step * width if row_step is None else row_step
    msg.data = bytes(msg.row_step * height) if data is None else data
    return msg


XYZ = [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]


@pytest.mark.parametrize(
    ("msg", "pattern"),
    [
        (_cloud(XYZ[:2]), "lacks the 'z' field"),
        (_cloud([("x", 0, 9, 1), *XYZ[1:]]), "field 'x' has unknown datatype 9"),
        (_cloud(XYZ, data=bytes(31)), "31 bytes, expected row_step\\*height = 32"),
        (_cloud([*XYZ, ("intensity", 14, 7, 1)]), "field 'intensity'.*does not fit in point_step 16"),
        (_cloud([*XYZ, ("x", 12, 7, 1)]), "field 'x' appears more than once"),
        (_cloud(XYZ, row_step=20), "row_step 20 is smaller than width\\*point_step = 32"),
        (_cloud(XYZ, point_step=0, row_step=0, data=b""), "point_step must be > 0"),
        (_cloud(XYZ, width=0, data=bytes(8)), "has 8 bytes, expected row_step\\*height = 0\\*1 = 0"),
    ],
)
def test_pointcloud2_errors_name_the_problem(msg, pattern):
    with pytest.raises(ros_msgs.ConversionError, match=pattern):
        ros_msgs.pointcloud2_to_xyzi(msg)
    assert issubclass(ros_msgs.ConversionError, ValueError)


def test_empty_cloud_is_not_an_error():
    assert ros_msgs.pointcloud2_to_xyzi(_cloud(XYZ, width=0)).shape == (0, 4)


# ------------------------------------------------------------------------------------------------------ Image


@FAST
@given(
    encoding=st.sampled_from(sorted(ros_msgs.IMAGE_ENCODINGS)),
    h=st.integers(1, 7),
    w=st.integers(1, 9),
    pad=st.integers(0, 5),
    big=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_image_round_trip_every_encoding(encoding, h, w, pad, big, seed):
    enc = ros_msgs.IMAGE_ENCODINGS[encoding]
    dtype = np.dtype(enc.dtype)
    shape = (h, w) if enc.channels == 1 else (h, w, enc.channels)
    arr = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    step = w * dtype.itemsize * enc.channels + pad
    msg = ros_msgs.array_to_image(arr, encoding, "cam", 7, step=step, is_bigendian=big)
    wire = deserialize_message(serialize_message(msg), Image)
    out = ros_msgs.image_to_array(wire)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    rgb = ros_msgs.image_to_rgb(wire)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous and rgb.flags.writeable
    expected = {
        "rgb8": lambda a: a,
        "bgr8": lambda a: a[:, :, ::-1],
        "rgba8": lambda a: a[:, :, :3],
        "bgra8": lambda a: a[:, :, [2, 1, 0]],
    }.get(encoding, lambda a: np.repeat((a >> 8 if a.dtype == np.uint16 else a)[:, :, None], 3, 2).astype(np.uint8))
    np.testing.assert_array_equal(rgb, expected(arr))


def test_big_endian_mono16_bytes_on_the_wire():
    msg = ros_msgs.array_to_image(np.array([[0x0102]], np.uint16), "mono16", is_bigendian=True)
    assert bytes(msg.data) == b"\x01\x02" and msg.is_bigendian == 1
    assert ros_msgs.image_to_array(msg)[0, 0] == 0x0102


def _image(encoding="rgb8", h=2, w=3, step=None, n=None):
    step = w * 3 if step is None else step
    return Image(height=h, width=w, encoding=encoding, step=step, data=bytes(step * h if n is None else n))


@pytest.mark.parametrize(
    ("msg", "pattern"),
    [
        (_image("yuv422"), "encoding 'yuv422' is not supported"),
        (_image(step=8), "step 8 is smaller than width\\*3 bytes = 9"),
        (_image(n=17), "17 bytes, expected step\\*height = 9\\*2 = 18"),
        (_image(h=0, n=0), "Image is empty"),
    ],
)
def test_image_errors_name_the_problem(msg, pattern):
    with pytest.raises(ros_msgs.ConversionError, match=pattern):
        ros_msgs.image_to_rgb(msg)


# ------------------------------------------------------------------------------------------------- CameraInfo


def test_camera_info_projection():
    P = np.array([[700.0, 0, 600, 45], [0, 710, 180, -0.3], [0, 0, 1, 0.003]])
    info = ros_msgs.projection_to_camera_info(P, (370, 1220), "cam", 1)
    np.testing.assert_array_equal(ros_msgs.camera_info_projection(info), P)
    info.p = np.zeros(12)
    np.testing.assert_array_equal(ros_msgs.camera_info_projection(info), np.c_[P[:, :3], np.zeros(3)])
    info.k = np.zeros(9)
    with pytest.raises(ros_msgs.ConversionError, match="focal lengths"):
        ros_msgs.camera_info_projection(info)
    bad = CameraInfo()
    bad.p = np.full(12, np.nan)
    with pytest.raises(ros_msgs.ConversionError, match="non-finite"):
        ros_msgs.camera_info_projection(bad)


# ---------------------------------------------------------------------------------------------------- Markers


def _labels(grid: VoxelGrid, n: int, seed: int = 0, classes=range(1, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(grid.shape, np.uint8)
    flat = labels.reshape(-1)
    idx = rng.choice(flat.size, min(n, flat.size), replace=False)
    flat[idx] = rng.choice(list(classes), idx.size)
    return labels


#: primitive type -> size (= alignment) in XCDR1
_CDR_PRIMITIVES = {"boolean": 1, "octet": 1, "char": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4,
                   "uint32": 4, "float": 4, "int64": 8, "uint64": 8, "double": 8}  # fmt: skip


def _cdr_padding(msg) -> tuple[list[int], int]:
    """Offsets of the alignment padding in the plain-CDR serialization of ``msg`` (any message), and its length.

    Fast CDR skips padding bytes without writing them, so they hold whatever the buffer held before: two
    serializations of one message agree everywhere but there.
    """
    pad: list[int] = []

    def align(pos: int, n: int) -> int:
        while (pos - 4) % n:  # alignment counts from the byte after the 4-byte encapsulation header
            pad.append(pos)
            pos += 1
        return pos

    def field(typ: str, value, pos: int) -> int:
        if typ in _CDR_PRIMITIVES:
            n = _CDR_PRIMITIVES[typ]
            return align(pos, n) + n
        if typ == "string" or typ.startswith("string<"):
            return align(pos, 4) + 4 + len(value.encode()) + 1
        if typ.startswith("sequence<"):
            inner = typ[len("sequence<") : -1].split(",")[0]
            pos = align(pos, 4) + 4
            for v in value:
                pos = field(inner, v, pos)
            return pos
        array = re.fullmatch(r"(.+)\[(\d+)\]", typ)
        if array:
            for v in value:
                pos = field(array.group(1), v, pos)
            return pos
        for name, sub in value.get_fields_and_field_types().items():  # a nested message
            pos = field(sub, getattr(value, name), pos)
        return pos

    end = 4
    for name, typ in msg.get_fields_and_field_types().items():
        end = field(typ, getattr(msg, name), end)
    return pad, end


def _published_ids(publish) -> set[int]:
    """Class ids a ``publish`` list selects, worked out here (not by the code under test)."""
    if publish is None:
        return set(range(1, CLASSES.num_classes))  # every class but the empty one (0)
    return {CLASSES.names.index(c) if isinstance(c, str) else int(c) for c in publish} - {CLASSES.empty_index}


def _reference_marker_array(labels, grid, frame_id, stamp_ns, alpha, publish=None) -> MarkerArray:
    """The MarkerArray built field by field with the plain rclpy message API: a DELETEALL marker, then per
    published class present (ascending id) a CUBE_LIST with one geometry_msgs/Point per voxel in C order."""
    stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    markers = [Marker(action=Marker.DELETEALL)]
    markers[0].header.frame_id, markers[0].header.stamp = frame_id, stamp
    for k in sorted(_published_ids(publish)):
        ijk = np.argwhere(labels == k)  # (n, 3), C order
        if not len(ijk):
            continue
        m = Marker(ns=CLASSES.names[k], id=k, type=Marker.CUBE_LIST, action=Marker.ADD)
        m.header.frame_id, m.header.stamp = frame_id, stamp
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = grid.voxel_size
        r, g, b = CLASSES.colors[k] / 255.0
        m.color.r, m.color.g, m.color.b, m.color.a = float(r), float(g), float(b), float(alpha)
        for i, j, kk in ijk:
            c = (np.array([i, j, kk]) + 0.5) * grid.voxel_size + np.array(grid.origin)
            m.points.append(Point(x=float(c[0]), y=float(c[1]), z=float(c[2])))
        markers.append(m)
    return MarkerArray(markers=markers)


@pytest.mark.parametrize(
    ("grid", "n", "publish"),
    [
        (VoxelGrid((0.0, -3.2, -2.0), 0.2, (32, 32, 8)), 300, None),  # power-of-two shape (bit shifts)
        (VoxelGrid((-1.0, -2.5, -0.4), 0.5, (7, 10, 3)), 60, ["car", "road", 13]),  # divmod path, filter
        (VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 4, 4)), 0, None),  # nothing occupied
    ],
)
def test_serialized_markers_equal_rclpy_bytes(grid, n, publish):
    """serialize_occupancy_markers splices the voxel centres into rclpy's bytes: the result must be byte for
    byte what rclpy serializes for the message built point by point."""
    labels = _labels(grid, n)
    data = ros_msgs.serialize_occupancy_markers(labels, grid, CLASSES, "velo", 1_234_567_890_123, 0.6, publish)
    reference = _reference_marker_array(labels, grid, "velo", 1_234_567_890_123, 0.6, publish)
    expected = serialize_message(reference)
    padding, end = _cdr_padding(reference)
    assert len(data) == len(expected) == end  # (end: the padding walk covers the whole message)
    data, expected = bytearray(data), bytearray(expected)
    for pos in padding:  # unwritten alignment bytes: whatever the serializer's buffer held
        data[pos] = expected[pos] = 0
    assert data == expected
    expect = labels.copy()
    expect[~np.isin(labels, list(_published_ids(publish)))] = CLASSES.empty_index
    got = readback.marker_array_to_occupancy(deserialize_message(bytes(data), MarkerArray), grid, CLASSES)
    np.testing.assert_array_equal(got, expect)


def test_publish_mask_rejects_unknown_classes():
    with pytest.raises(ValueError, match="unknown class 'spaceship'"):
        ros_msgs.publish_mask(CLASSES, ["car", "spaceship"])
    with pytest.raises(ValueError, match="class id 40"):
        ros_msgs.publish_mask(CLASSES, [40])
    assert not ros_msgs.publish_mask(CLASSES, ["empty", "car"])[CLASSES.empty_index]


def test_voxel_cloud_round_trip_and_colours():
    grid = VoxelGrid((0.0, -3.2, -2.0), 0.2, (32, 32, 8))
    labels = _labels(grid, 500, seed=3)
    msg = ros_msgs.occupancy_to_pointcloud2(labels, grid, CLASSES, "velo", 42)
    wire = deserialize_message(serialize_message(msg), PointCloud2)
    assert [f.name for f in wire.fields] == ["x", "y", "z", "rgb", "label"]
    assert wire.width == 500 and wire.header.stamp.nanosec == 42
    np.testing.assert_array_equal(readback.pointcloud2_to_occupancy(wire, grid, CLASSES.empty_index), labels)
    arr = ros_msgs.pointcloud2_to_array(wire)
    rgb = arr["rgb"].view(np.uint32)
    np.testing.assert_array_equal(
        np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], 1), CLASSES.colors[arr["label"]]
    )


@pytest.mark.bench
def test_marker_array_100k_voxels_under_20ms():
    import rclpy
    from rclpy.node import Node

    labels = _labels(SEMANTIC_KITTI_GRID, 100_000)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = Node("bench_markers", context=ctx)
        pub = node.create_publisher(MarkerArray, "bench/markers", 1)
        times = []
        for i in range(20):
            t0 = time.perf_counter()
            pub.publish(ros_msgs.serialize_occupancy_markers(labels, SEMANTIC_KITTI_GRID, CLASSES, "velo", i, 0.8))
            times.append(time.perf_counter() - t0)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert np.median(times) < 0.020, f"median {np.median(times) * 1e3:.1f} ms"
