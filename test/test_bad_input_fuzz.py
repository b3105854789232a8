"""Hypothesis fuzzing of the PointCloud2 / Image / CameraInfo decoders of ``occle_ros.conversions``.

Random field lists, offsets, datatypes, counts, sizes, steps, encodings and payload lengths: the decoders
either return a well-formed array or raise :class:`occle_ros.conversions.ConversionError` (the documented
type) -- never another exception, never a hang or a huge allocation driven by header values.
"""

from __future__ import annotations

import array

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from occle_ros import msgs as ros_msgs

U32 = 2**32 - 1
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
# Small values most of the time (realistic, exercise the decode path), huge ones sometimes (header lies).
sizes = st.one_of(st.integers(0, 40), st.integers(0, U32))

fields = st.lists(
    st.builds(
        lambda name, offset, datatype, count: PointField(name=name, offset=offset, datatype=datatype, count=count),
        name=st.sampled_from(["x", "y", "z", "intensity", "i", "rgb", "ring", "", "t"]),
        offset=st.one_of(st.integers(0, 24), st.integers(0, U32)),
        datatype=st.integers(0, 12),
        count=st.one_of(st.integers(0, 3), st.integers(0, U32)),
    ),
    max_size=6,
)


@st.composite
def clouds(draw) -> PointCloud2:
    msg = PointCloud2()
    msg.fields = draw(fields)
    msg.point_step = draw(st.one_of(st.integers(0, 32), st.integers(0, U32)))
    msg.height = draw(st.one_of(st.integers(0, 3), st.integers(0, U32)))
    msg.width = draw(sizes)
    natural = (msg.width * msg.point_step) & U32
    msg.row_step = draw(st.one_of(st.just(natural), st.integers(0, U32), st.integers(natural, min(natural + 8, U32))))
    n_bytes = (msg.row_step * msg.height) if msg.row_step * msg.height < 4096 else 0
    n_bytes = draw(st.one_of(st.just(n_bytes), st.integers(0, 512)))
    msg.data = array.array("B", draw(st.binary(min_size=n_bytes, max_size=n_bytes)))
    msg.is_bigendian = draw(st.booleans())
    msg.is_dense = draw(st.booleans())
    return msg


@st.composite
def layout_clouds(draw) -> PointCloud2:
    """Mostly well-formed clouds (valid datatypes, packed fields with padding, any order, either endianness,
    NaN/Inf-laden payloads), sometimes with one header value off: these reach the decode path."""
    names = draw(st.permutations(["x", "y", "z", "intensity", "ring"]))[: draw(st.integers(1, 5))]
    msg = PointCloud2()
    offset = 0
    for name in names:
        datatype = draw(st.integers(1, 8))
        count = draw(st.sampled_from([1, 1, 1, 0, 2]))
        offset += draw(st.integers(0, 3))
        msg.fields.append(PointField(name=name, offset=offset, datatype=datatype, count=count))
        offset += int(np.dtype(ros_msgs.POINTFIELD_TYPES[datatype]).itemsize) * max(count, 1)
    msg.point_step = offset + draw(st.integers(0, 4))
    msg.height = draw(st.integers(1, 3))
    msg.width = draw(st.integers(0, 20))
    msg.row_step = msg.width * msg.point_step + draw(st.sampled_from([0, 0, 3]))
    n_bytes = msg.row_step * msg.height + draw(st.sampled_from([0, 0, 0, -1, 1]))
    n_bytes = max(n_bytes, 0)
    payload = draw(st.binary(min_size=n_bytes, max_size=n_bytes))
    if draw(st.booleans()):  # float32 payload with NaN / Inf / huge values
        vals = draw(st.lists(st.floats(width=32), min_size=n_bytes // 4, max_size=n_bytes // 4))
        payload = np.asarray(vals, np.float32).tobytes() + payload[: n_bytes % 4]
    msg.data = array.array("B", payload)
    msg.is_bigendian = draw(st.booleans())
    return msg


@st.composite
def images(draw) -> Image:
    msg = Image()
    named = st.sampled_from([*sorted(ros_msgs.IMAGE_ENCODINGS), "yuv422", "32FC1", ""])
    msg.encoding = draw(named if draw(st.integers(0, 4)) else st.text(max_size=8))
    msg.height = draw(st.one_of(st.integers(0, 8), st.integers(0, U32)))
    msg.width = draw(st.one_of(st.integers(0, 8), st.integers(0, U32)))
    pixel = {"u1": 1, "u2": 2}.get(getattr(ros_msgs.IMAGE_ENCODINGS.get(msg.encoding), "dtype", "u1"), 1)
    pixel *= getattr(ros_msgs.IMAGE_ENCODINGS.get(msg.encoding), "channels", 1)
    natural = (msg.width * pixel) & U32
    msg.step = draw(st.one_of(st.just(natural), st.integers(0, U32), st.integers(natural, min(natural + 4, U32))))
    n_bytes = msg.step * msg.height if msg.step * msg.height < 4096 else 0
    n_bytes = draw(st.one_of(st.just(n_bytes), st.integers(0, 256)))
    msg.data = array.array("B", draw(st.binary(min_size=n_bytes, max_size=n_bytes)))
    msg.is_bigendian = draw(st.integers(0, 1))
    return msg


@FUZZ
@given(st.one_of(clouds(), layout_clouds()))
@example(PointCloud2(point_step=2**31))  # found by this test: numpy's itemsize is a C int
def test_pointcloud2_decoder_raises_only_conversion_error(msg):
    try:
        arr = ros_msgs.pointcloud2_to_array(msg)
    except ros_msgs.ConversionError:
        return
    assert arr.shape == (msg.height * msg.width,) and arr.dtype.itemsize == msg.point_step
    try:
        pts = ros_msgs.pointcloud2_to_xyzi(msg)
    except ros_msgs.ConversionError as exc:
        assert "lacks the" in str(exc)
        return
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 4 and pts.shape[0] <= arr.shape[0]
    assert np.isfinite(pts).all()


@FUZZ
@given(images())
def test_image_decoder_raises_only_conversion_error(msg):
    try:
        rgb = ros_msgs.image_to_rgb(msg)
    except ros_msgs.ConversionError:
        return
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@FUZZ
@given(st.lists(finite_or_not, min_size=12, max_size=12), st.lists(finite_or_not, min_size=9, max_size=9))
def test_camera_info_decoder_raises_only_conversion_error(p, k):
    info = CameraInfo()
    info.p, info.k = p, k
    try:
        P = ros_msgs.camera_info_projection(info)
    except ros_msgs.ConversionError:
        return
    assert P.shape == (3, 4) and np.isfinite(P).all() and P[0, 0] > 0 and P[1, 1] > 0
