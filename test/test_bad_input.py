"""Bad input table (issue 7): malformed messages, timing faults, broken start-up and corrupt files.

Every row names what it sends, the counter that must increment and the log text (or exception) expected.
Node rows go through ``OccleNode.handle_frame`` (what the worker does with a synchronised set) or the
subscription callback ``OccleNode._on_msg``; the node must keep running after each. The small random-initialised
checkpoint (``conftest``) and the frame helpers (``helpers_ros``) are the ones of ``test_ros_node``.
"""

from __future__ import annotations

import array
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_ros import HW, STAMP, frame_messages, make_frame, node_params, nonblank_lines, run_node_process, wait_until
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2, PointField

from occle_core.checkpoint import load_checkpoint, save_checkpoint
from occle_core.geometry import Calib
from occle_core.predictor import Predictor
from occle_ros import msgs as ros_msgs
from occle_ros import node as occle_node
from occle_ros.pipeline import Stream

pytestmark = pytest.mark.ros


class LogRecorder:
    """Stands in for the node's rclpy logger: keeps (level, text) of every line actually logged."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Callable[[str], None]:
        return lambda text, **_: self.lines.append((level, str(text)))

    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


@contextmanager
def recording_node(ctx, checkpoint: Path, predictor: Predictor, log_throttle: float) -> Iterator[occle_node.OccleNode]:
    """An OccleNode (counters at 0) whose logger is a LogRecorder, ``node.log``; destroyed on exit."""
    n = occle_node.OccleNode(
        predictor=predictor, context=ctx, parameter_overrides=node_params(checkpoint, log_throttle=log_throttle)
    )
    n.log = LogRecorder()
    n.get_logger = lambda: n.log
    try:
        yield n
    finally:
        n.destroy_node()


@pytest.fixture
def node(ros_module_context, checkpoint, predictor):
    """A fresh node per row (counters start at 0), logging unthrottled into a recorder."""
    with recording_node(ros_module_context, checkpoint, predictor, log_throttle=0.0) as n:
        yield n


# -- message builders -------------------------------------------------------------------------------------------


def good_frame(seed: int = 0, n: int = 3000):
    rgb, pts, calib = make_frame(seed, n)
    return rgb, pts, calib, frame_messages(rgb, pts, STAMP)


def raw_cloud(fields, point_step: int, data: bytes, width: int, height: int = 1, row_step: int | None = None):
    msg = PointCloud2()
    msg.header.frame_id = "velo"
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=nm, offset=off, datatype=dt, count=1) for nm, off, dt in fields]
    msg.point_step = point_step
    msg.row_step = width * point_step if row_step is None else row_step
    msg.data = array.array("B", data)
    msg.is_dense = False
    return msg


XYZI = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7)]


def _pts_bytes(pts: np.ndarray) -> bytes:
    return np.ascontiguousarray(pts, np.float32).tobytes()


def _with_nan(pts: np.ndarray) -> np.ndarray:
    bad = pts.copy()
    bad[::7, 0] = np.nan
    bad[1::11, 1] = np.inf
    bad[2::13, 2] = -np.inf
    return bad


def _organised(pts: np.ndarray) -> PointCloud2:
    """A 2-row organised cloud, is_dense False, with NaN 'no return' cells."""
    grid = _with_nan(pts[:3000]).reshape(2, 1500, 4)
    return raw_cloud(XYZI, 16, _pts_bytes(grid), width=1500, height=2)


def _image(arr: np.ndarray, **fields):
    msg = ros_msgs.array_to_image(arr, "rgb8", "camera", STAMP)
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _info(P: np.ndarray | None = None, K: np.ndarray | None = None, hw=HW):
    info = ros_msgs.projection_to_camera_info(np.eye(3, 4) if P is None else P, hw, "camera", STAMP)
    info.p = (np.zeros(12) if P is None else np.asarray(P, np.float64).reshape(-1)).tolist()
    info.k = (np.zeros(9) if K is None else np.asarray(K, np.float64).reshape(-1)).tolist()
    return info


NAN_P = np.full((3, 4), np.nan)
K_GOOD = np.array([[80.0, 0, 80], [0, 80.0, 24], [0, 0, 1]])
K_NAN = K_GOOD.copy()
K_NAN[0, 2] = np.nan

# Each row: id, mutate(rgb, pts, (image, info, cloud)) -> (image, info, cloud), counter, log regex (None: processed).
FRAME_ROWS = [
    ("cloud_zero_points", lambda r, p, m: (m[0], m[1], ros_msgs.xyzi_to_pointcloud2(p[:0], "velo", STAMP)),
     "rejected.cloud_empty", r"frame skipped \(cloud_empty\): PointCloud2 has no finite points"),
    ("cloud_all_nan", lambda r, p, m: (m[0], m[1], ros_msgs.xyzi_to_pointcloud2(p * np.nan, "velo", STAMP)),
     "rejected.cloud_empty", r"cloud_empty.*no finite points"),
    ("cloud_some_nan_inf_filtered",
     lambda r, p, m: (m[0], m[1], ros_msgs.xyzi_to_pointcloud2(_with_nan(p), "velo", STAMP)),
     "processed", None),
    ("cloud_nan_intensity_zeroed", lambda r, p, m: (m[0], m[1], ros_msgs.xyzi_to_pointcloud2(
        np.c_[p[:, :3], np.full(len(p), np.nan, np.float32)], "velo", STAMP)), "processed", None),
    ("cloud_non_dense_organised", lambda r, p, m: (m[0], m[1], _organised(p)), "processed", None),
    ("cloud_missing_z", lambda r, p, m: (m[0], m[1], raw_cloud(XYZI[:2] + XYZI[3:], 16, _pts_bytes(p), len(p))),
     "rejected.cloud_invalid", r"cloud_invalid.*lacks the 'z' field"),
    ("cloud_unknown_datatype", lambda r, p, m: (m[0], m[1], raw_cloud(
        [("x", 0, 42), *XYZI[1:]], 16, _pts_bytes(p), len(p))),
     "rejected.cloud_invalid", r"field 'x' has unknown datatype 42"),
    ("cloud_data_shorter_than_row_step_x_height", lambda r, p, m: (m[0], m[1], raw_cloud(
        XYZI, 16, _pts_bytes(p)[:-16], len(p))),
     "rejected.cloud_invalid", r"PointCloud2.data has 47984 bytes, expected row_step\*height"),
    ("cloud_data_longer_than_row_step_x_height", lambda r, p, m: (m[0], m[1], raw_cloud(
        XYZI, 16, _pts_bytes(p) + b"\0" * 5, len(p))),
     "rejected.cloud_invalid", r"expected row_step\*height = 48000\*1"),
    ("cloud_row_step_too_small", lambda r, p, m: (m[0], m[1], raw_cloud(
        XYZI, 16, _pts_bytes(p), len(p), row_step=100)),
     "rejected.cloud_invalid", r"row_step 100 is smaller than width\*point_step"),
    ("cloud_field_beyond_point_step", lambda r, p, m: (m[0], m[1], raw_cloud(
        [*XYZI[:3], ("intensity", 14, 7)], 16, _pts_bytes(p), len(p))),
     "rejected.cloud_invalid", r"'intensity' \(offset 14.*does not fit in point_step 16"),
    ("cloud_duplicate_field", lambda r, p, m: (m[0], m[1], raw_cloud(
        [*XYZI[:3], ("x", 12, 7)], 16, _pts_bytes(p), len(p))),
     "rejected.cloud_invalid", r"field 'x' appears more than once"),
    ("cloud_point_step_zero", lambda r, p, m: (m[0], m[1], raw_cloud(XYZI, 0, b"", len(p))),
     "rejected.cloud_invalid", r"point_step must be > 0"),
    ("image_unsupported_encoding", lambda r, p, m: (_image(r, encoding="yuv422"), m[1], m[2]),
     "rejected.image_invalid", r"Image.encoding 'yuv422' is not supported"),
    ("image_step_smaller_than_width", lambda r, p, m: (_image(r, step=100), m[1], m[2]),
     "rejected.image_invalid", r"Image.step 100 is smaller than width\*3 bytes = 480"),
    ("image_data_size_mismatch", lambda r, p, m: (_image(r, data=array.array("B", bytes(100))), m[1], m[2]),
     "rejected.image_invalid", r"Image.data has 100 bytes, expected step\*height"),
    ("image_empty", lambda r, p, m: (_image(r, height=0, width=0, step=0, data=array.array("B")), m[1], m[2]),
     "rejected.image_invalid", r"Image is empty: height=0, width=0"),
    ("image_size_differs_from_camera_info", lambda r, p, m: (_image(np.ascontiguousarray(r[:24, :80])), m[1], m[2]),
     "rejected.image_size_mismatch", r"image is 80x24 but camera_info is 160x48"),
    ("image_too_small_for_model", lambda r, p, m: (_image(np.ascontiguousarray(r[:4, :4])), _info(
        P=np.c_[K_GOOD, np.zeros(3)], hw=(4, 4)), m[2]),
     "rejected.predictor_rejected", r"image must be at least 8x8"),
    ("camera_info_all_zero", lambda r, p, m: (m[0], _info(), m[2]),
     "rejected.camera_info_invalid", r"focal lengths fx=0.0, fy=0.0"),
    ("camera_info_nan_p", lambda r, p, m: (m[0], _info(P=NAN_P), m[2]),
     "rejected.camera_info_invalid", r"CameraInfo.p has non-finite values"),
    ("camera_info_nan_k_zero_p", lambda r, p, m: (m[0], _info(K=K_NAN), m[2]),
     "rejected.camera_info_invalid", r"CameraInfo.k has non-finite values and CameraInfo.p is all zero"),
    ("camera_info_negative_focal", lambda r, p, m: (m[0], _info(P=np.c_[-K_GOOD, np.zeros(3)]), m[2]),
     "rejected.camera_info_invalid", r"expected > 0"),
    ("camera_info_zero_p_valid_k_fallback", lambda r, p, m: (m[0], _info(K=K_GOOD), m[2]), "processed", None),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "counter", "log"), [r[1:] for r in FRAME_ROWS], ids=[r[0] for r in FRAME_ROWS])
def test_bad_frame_is_logged_counted_and_skipped(node, predictor, mutate, counter, log):
    rgb, pts, calib, msgs = good_frame()
    image, info, cloud = mutate(rgb, pts, msgs)
    labels = node.handle_frame(image, info, cloud)
    s = node.statistics()
    assert s[counter] == 1, s
    if log is None:  # accepted: the frame is processed and equals the predictor on the decodable points
        assert labels is not None and s["rejected"] == 0 and node.log.lines == []
        finite = ros_msgs.pointcloud2_to_xyzi(cloud)
        P = ros_msgs.camera_info_projection(info)
        np.testing.assert_array_equal(labels, predictor.predict(rgb, finite, Calib(P, calib.T_cam_lidar, HW)))
    else:
        assert labels is None and s["rejected"] == 1 and s["processed"] == 0
        assert len(node.log.lines) == 1 and node.log.lines[0][0] == "warning"
        assert re.search(log, node.log.text()), node.log.text()
    # the node keeps running: the next good frame goes through
    assert node.handle_frame(*msgs) is not None and node.statistics()["processed"] == s["processed"] + 1


def test_two_million_points_are_subsampled_before_the_model(node):
    """A 2M-point cloud is decoded vectorised and subsampled to max_points (200k) before the model."""
    rgb, pts, _, (image, info, _) = good_frame(n=2_000_000)
    cloud = ros_msgs.xyzi_to_pointcloud2(pts, "velo", STAMP)
    seen: list[int] = []
    inner = node.predictor.predict
    node.predictor = type("Spy", (), {"predict": lambda self, im, p, c: seen.append(len(p)) or inner(im, p, c),
                                      "grid": node.grid, "classes": node.classes})()  # fmt: skip
    assert node.handle_frame(image, info, cloud) is not None
    s = node.statistics()
    assert s["clouds_subsampled"] == 1 and s["processed"] == 1
    assert seen == [node.get_parameter("max_points").value] == [200_000]


def test_repeated_bad_input_is_throttled(ros_module_context, checkpoint, predictor):
    with recording_node(ros_module_context, checkpoint, predictor, log_throttle=30.0) as n:
        _, _, _, (image, info, _) = good_frame()
        empty = ros_msgs.xyzi_to_pointcloud2(np.zeros((0, 4), np.float32), "velo", STAMP)
        for _ in range(20):
            n.handle_frame(image, info, empty)
        assert n.statistics()["rejected.cloud_empty"] == 20
        assert len(n.log.lines) == 1  # once per log_throttle seconds per reason


# -- timing faults (through the subscription callback) ----------------------------------------------------------


def _send(node, stamp_ns: int, streams=(0, 1, 2), msgs=None) -> None:
    msgs = msgs or good_frame()[3]
    for s in streams:
        m = msgs[s]
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        node._on_msg(Stream(s), m)


def _duplicate(node):
    _send(node, STAMP)
    _send(node, STAMP, streams=(0, 2))  # image and cloud again with the stamp just matched


def _duplicate_queued(node):
    _send(node, STAMP, streams=(0, 0))  # the same image twice before its partners arrive


def _out_of_order(node):
    _send(node, STAMP + 100_000_000)
    _send(node, STAMP + 50_000_000, streams=(0,))  # an image older than the last match


def _bag_loop(node):
    _send(node, STAMP + 100_000_000)
    _send(node, STAMP)  # every stream goes back by less than reset_threshold: a short bag looping
    _send(node, STAMP + 50_000_000)  # the first looped set is lost to the reset; the next one matches


def _clock_jump_back(node):
    _send(node, STAMP + 10_000_000_000)
    _send(node, STAMP)  # 10 s back: more than reset_threshold


def _overflow(node):
    for i in range(node.settings.queue_size + 5):  # image only: the camera is alive, the LiDAR is not
        _send(node, STAMP + i * 100_000_000, streams=(0,))


TIMING_ROWS = [
    ("duplicated_stamps", _duplicate, "sync_duplicate", 2, 1),
    ("duplicated_stamps_queued", _duplicate_queued, "sync_duplicate", 1, 0),
    ("out_of_order_stamps", _out_of_order, "sync_late", 1, 1),
    ("bag_loop_restart", _bag_loop, "sync_reset", 1, 2),
    ("clock_jump_backwards", _clock_jump_back, "sync_reset", 1, 2),
    ("one_sensor_only_queue_bounded", _overflow, "sync_overflow", 5, 0),
]


@pytest.mark.parametrize(("feed", "counter", "count", "matched"), [r[1:] for r in TIMING_ROWS],
                         ids=[r[0] for r in TIMING_ROWS])  # fmt: skip
def test_timing_faults_are_counted(node, feed, counter, count, matched):
    feed(node)
    s = node.statistics()
    assert s[counter] == count and s["sync_matched"] == matched, s
    assert max(node._sync.pending()) <= node.settings.queue_size
    assert wait_until(lambda: node.statistics()["processed"] + node.statistics()["dropped_superseded"] == matched)


def test_sensor_that_stops_gets_no_stale_republish(node):
    """After the cloud stops, images and camera_info keep coming: nothing more is processed or published."""
    _send(node, STAMP)
    assert wait_until(lambda: node.statistics()["processed"] == 1)
    for i in range(1, 30):
        _send(node, STAMP + i * 100_000_000, streams=(0, 1))
    s = node.statistics()  # _send runs the callbacks synchronously: nothing more can be matched
    assert s["processed"] == 1 and s["sync_matched"] == 1 and s["rejected"] == 0
    assert max(node._sync.pending()) <= node.settings.queue_size


def test_missing_camera_info_warns_throttled(ros_module_context, checkpoint, predictor):
    with recording_node(ros_module_context, checkpoint, predictor, log_throttle=30.0) as n:
        n.stats.started -= 10.0  # past the 2 s start-up grace period
        for i in range(10):
            _send(n, STAMP + i * 100_000_000, streams=(0, 2))
        warnings = [t for lvl, t in n.log.lines if "camera_info" in t]
        assert warnings == ["no camera_info received yet on ['camera_info']; waiting (frames need P)"]
        s = n.statistics()
        assert s["received_image"] == 10 and s["received_points"] == 10 and s["sync_matched"] == 0


# -- start-up: one error line, exit status 1, no traceback ------------------------------------------------------


def _truncated(ckpt: Path, tmp: Path) -> Path:
    out = tmp / "truncated.pt"
    out.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return out


def _foreign(ckpt: Path, tmp: Path) -> Path:
    out = tmp / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, out)
    return out


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_pickle(ckpt: Path, tmp: Path) -> Path:
    """A pickle that would create ``tmp/pwned`` when unpickled without weights_only."""
    out = tmp / "evil.pt"
    torch.save({"format": "occle", "payload": _RunsCode(tmp / "pwned")}, out)
    return out


def _other_grid(ckpt: Path, tmp: Path) -> Path:
    c = load_checkpoint(ckpt)
    c["grid"] = {**c["grid"], "shape": [32, 32, 4]}
    out = tmp / "other_grid.pt"
    save_checkpoint(out, c)
    return out


def _other_class_count(ckpt: Path, tmp: Path) -> Path:
    """Weights whose final head predicts 7 classes while the config's class table has 20."""
    c = load_checkpoint(ckpt)
    key = next(k for k in c["model"] if k.startswith("heads.logits") and k.endswith("weight"))
    w = c["model"][key]
    c["model"][key] = torch.zeros((7, *w.shape[1:]), dtype=w.dtype)
    out = tmp / "other_classes.pt"
    save_checkpoint(out, c)
    return out


def _missing(ckpt: Path, tmp: Path) -> Path:
    return tmp / "does_not_exist.pt"


def _ok(ckpt: Path, tmp: Path) -> Path:
    return ckpt


STARTUP_ROWS = [
    ("checkpoint_missing", _missing, [], r"checkpoint: checkpoint not found: .*does_not_exist\.pt"),
    ("checkpoint_truncated", _truncated, [], r"checkpoint .*truncated\.pt is truncated or not a torch file"),
    ("checkpoint_foreign", _foreign, [], r"checkpoint .*foreign\.pt is not an occle checkpoint"),
    ("checkpoint_runs_code_refused", _code_pickle, [], r"evil\.pt refused: .*weights_only=True"),
    ("checkpoint_other_grid", _other_grid, [], r"checkpoint: .*grid"),
    ("checkpoint_other_class_count", _other_class_count, [], r"weights do not fit.*: size mismatch for heads"),
    ("device_cuda_on_cpu_host", _ok, ["device:=cuda"], r"device 'cuda' requested but CUDA is not available"),
    ("device_unknown", _ok, ["device:=tpu"], r"parameter device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("marker_alpha_out_of_range", _ok, ["marker_alpha:=2.0"], r"parameter marker_alpha must be in \[0.0, 1.0\]"),
    ("sync_slop_negative", _ok, ["sync.slop:=-1.0"], r"parameter sync.slop must be in \[0.0, 10.0\], got -1.0"),
    ("max_points_zero", _ok, ["max_points:=0"], r"parameter max_points must be in \[1, 100000000\], got 0"),
    ("extrinsics_matrix_wrong_length", _ok, ["extrinsics.source:=matrix", "extrinsics.matrix:=[1.0,2.0,3.0]"],
     r"extrinsics.matrix must have 16 values per camera \(1 cameras: 16\), got 3"),
    ("extrinsics_calib_file_missing", _ok, ["extrinsics.source:=calib_file", "extrinsics.calib_file:=/no/calib.txt"],
     r"parameter extrinsics.calib_file: calibration file not found: /no/calib\.txt"),
    ("unknown_parameter", _ok, ["marker_alfa:=0.3"], r"unknown parameter\(s\) \['marker_alfa'\]"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "extra", "pattern"), [r[1:] for r in STARTUP_ROWS], ids=[r[0] for r in STARTUP_ROWS])
def test_startup_error_is_one_line_and_exit_1(tmp_path, checkpoint, capfd, make, extra, pattern):
    if "cuda" in pattern and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    ckpt = make(checkpoint, tmp_path)
    args = ["--ros-args", "-p", f"checkpoint:={ckpt}", "-p", "extrinsics.source:=matrix"]
    args += [a for e in extra for a in ("-p", e)]
    if not any(e.startswith("device") for e in extra):
        args += ["-p", "device:=cpu"]
    capfd.readouterr()
    assert occle_node.main(args) == 1
    err = capfd.readouterr().err
    lines = nonblank_lines(err)
    assert len(lines) == 1 and lines[0].startswith("occle_node: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists(), "loading the checkpoint ran code"


def test_startup_error_of_the_executable_has_no_traceback(tmp_path, checkpoint):
    """The same through a real process: `python -m occle_ros.node --ros-args -p checkpoint:=<truncated>`."""
    bad = _truncated(checkpoint, tmp_path)
    proc, lines = run_node_process("-p", f"checkpoint:={bad}", "-p", "device:=cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert lines == [lines[0]] and "truncated.pt is truncated or not a torch file" in lines[0], proc.stderr


# -- dataset readers and occle-play ------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _read_velodyne(tmp: Path):
    from occle_core.data.semantic_kitti import read_points

    return read_points(_write(tmp / "velodyne" / "000000.bin", bytes(30)))


def _read_voxel_bin(tmp: Path):
    from occle_core.data.semantic_kitti import read_voxel_bits

    return read_voxel_bits(_write(tmp / "voxels" / "000000.invalid", bytes(1000)))


def _read_voxel_label(tmp: Path):
    from occle_core.data.semantic_kitti import read_voxel_labels

    return read_voxel_labels(_write(tmp / "voxels" / "000000.label", bytes(1001)))


def _read_point_label(tmp: Path):
    from occle_core.data.semantic_kitti import read_point_labels

    return read_point_labels(_write(tmp / "labels" / "000000.label", bytes(40)), num_points=11)


def _read_calib_missing_tr(tmp: Path):
    from occle_core.geometry import read_kitti_calib

    body = "".join(f"P{i}: " + " ".join(["1.0"] * 12) + "\n" for i in range(4))
    return read_kitti_calib(_write(tmp / "calib.txt", body.encode()))


def _read_calib_garbage(tmp: Path):
    from occle_core.geometry import read_kitti_calib

    return read_kitti_calib(_write(tmp / "calib.txt", b"P0: 1 2 three\n"))


def _read_occ3d_corrupt(tmp: Path):
    from occle_core.data.occ3d import read_occ3d_labels

    return read_occ3d_labels(_write(tmp / "labels.npz", b"PK\x03\x04 not really a zip"))


def _read_occ3d_missing_key(tmp: Path):
    from occle_core.data.occ3d import read_occ3d_labels

    path = tmp / "labels.npz"
    np.savez(path, semantics=np.zeros((4, 4, 2), np.uint8))
    return read_occ3d_labels(path, shape=(4, 4, 2))


def _read_occ3d_wrong_shape(tmp: Path):
    from occle_core.data.occ3d import read_occ3d_labels

    path = tmp / "labels.npz"
    z = np.zeros((4, 4, 2), np.uint8)
    np.savez(path, semantics=z, mask_lidar=z, mask_camera=z)
    return read_occ3d_labels(path)


READER_ROWS = [
    ("velodyne_bin_truncated", _read_velodyne, ValueError, r"000000\.bin: size 30 bytes is not a multiple of 16"),
    ("voxel_bin_wrong_size", _read_voxel_bin, ValueError, r"000000\.invalid: size 1000 bytes, expected 262144"),
    ("voxel_label_wrong_size", _read_voxel_label, ValueError, r"000000\.label: size 1001 bytes, expected 4194304"),
    ("point_label_count_mismatch", _read_point_label, ValueError, r"holds 10 labels, expected 11"),
    ("calib_missing_tr", _read_calib_missing_tr, ValueError, r"calib\.txt: missing key 'Tr'"),
    ("calib_non_numeric", _read_calib_garbage, ValueError, r"calib\.txt:1: key 'P0' has a non-numeric value"),
    ("occ3d_npz_corrupt", _read_occ3d_corrupt, ValueError, r"labels\.npz: not a readable \.npz archive"),
    ("occ3d_npz_missing_key", _read_occ3d_missing_key, ValueError, r"labels\.npz: missing array 'mask_lidar'"),
    ("occ3d_npz_wrong_shape", _read_occ3d_wrong_shape, ValueError, r"'semantics' has shape \(4, 4, 2\), expected"),
]


@pytest.mark.parametrize(("read", "exc", "pattern"), [r[1:] for r in READER_ROWS], ids=[r[0] for r in READER_ROWS])
def test_corrupt_file_gives_a_clear_error_naming_it(tmp_path, read, exc, pattern):
    with pytest.raises(exc, match=pattern):
        read(tmp_path)


def test_bag_with_unknown_message_types_is_skipped_with_a_warning(tmp_path, ros_module_context):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from occle_ros import bag_player

    ts = get_typestore(Stores.LATEST)
    ts.register(get_types_from_msg("int32 value", "my_pkg/msg/Custom"))
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_custom = w.add_connection("/custom", "my_pkg/msg/Custom", typestore=ts)
        c_str = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        for i in range(3):
            t = 1_000_000_000 + i * 1_000_000
            w.write(c_custom, t, ts.serialize_cdr(ts.types["my_pkg/msg/Custom"](value=i), "my_pkg/msg/Custom"))
            w.write(c_str, t, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data=f"m{i}"), "std_msgs/msg/String"))
    player_node = Node("bad_bag_player", context=ros_module_context)
    rec = LogRecorder()
    player_node.get_logger = lambda: rec
    try:
        player = bag_player.BagPlayer(player_node, bag, rate=100.0)
        stats = player.play()
    finally:
        player_node.destroy_node()
    assert stats.skipped_types == {"/custom": "my_pkg/msg/Custom"}
    assert stats.published.get("/chatter") == 3
    assert rec.lines == [("warning", "skipping topic /custom: message type my_pkg/msg/Custom is not installed here")]
