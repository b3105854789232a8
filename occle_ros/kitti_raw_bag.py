"""A KITTI raw ``*_sync`` drive as the ROS 1 bag that the widely used ``kitti2bag`` (``raw_synced``) writes.

Topics, frames and message contents follow that tool (tomas789/kitti2bag with pykitti's calibration chain):

- ``/kitti/camera_color_left/image_raw``   sensor_msgs/Image ``bgr8`` (it converts with OpenCV's imread), frame
  ``camera_color_left``, stamps from ``image_02/timestamps.txt``
- ``/kitti/camera_color_left/camera_info`` sensor_msgs/CameraInfo plumb_bob: K = ``K_02``, D = ``D_02``,
  R = ``R_rect_02``, P = ``P_rect_02`` of ``calib_cam_to_cam.txt`` (K = P_rect_02's 3x3 and D = 0 when the file
  has no unrectified ``K_02`` / ``D_02``), the image's height and width
- ``/kitti/velo/pointcloud``               sensor_msgs/PointCloud2, float32 fields ``x y z i``, frame ``velo_link``,
  stamps from ``velodyne_points/timestamps.txt``
- ``/kitti/oxts/imu`` (sensor_msgs/Imu), ``/kitti/oxts/gps/fix`` (NavSatFix), ``/kitti/oxts/gps/vel``
  (geometry_msgs/TwistStamped), frame ``imu_link``, stamps from ``oxts/timestamps.txt``
- ``/tf_static`` at every OXTS stamp: ``base_link -> imu_link`` (the tool's fixed offset), ``imu_link -> velo_link``
  (inverse of ``calib_imu_to_velo``), ``imu_link -> camera_{gray,color}_{left,right}`` (pykitti's ``T_camN_imu``
  inverted: rectified camera N = translation ``P_rect_0N[0, 3] / P_rect_0N[0, 0]`` after ``R_rect_00`` and
  ``calib_velo_to_cam``)
- ``/tf`` at every OXTS stamp: ``world -> base_link`` = the IMU pose of the OXTS packet (pykitti's ``T_w_imu``,
  Mercator scale of the first packet), as the tool writes it.

KITTI timestamps (``2011-09-26 13:02:25.964389445``) are read as UTC, to the nanosecond (the original tool goes
through the local time zone and microseconds). Images are the colour camera ``image_02`` only (the model's camera).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from transforms3d.euler import euler2quat

from occle_core.data.kitti import calib_matrix, oxts_poses, read_calib_file, read_imu_to_velo, read_oxts, read_raw_calib
from occle_core.data.semantic_kitti import read_image, read_points
from occle_ros.bag_writer import BagWriter

TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
    "imu": "/kitti/oxts/imu",
    "gps_fix": "/kitti/oxts/gps/fix",
    "gps_vel": "/kitti/oxts/gps/vel",
}
IMU_FRAME, VELO_FRAME, BASE_FRAME, WORLD_FRAME = "imu_link", "velo_link", "base_link", "world"
CAMERA_FRAMES = ("camera_gray_left", "camera_gray_right", "camera_color_left", "camera_color_right")
CAMERA_FRAME = CAMERA_FRAMES[2]
#: kitti2bag's base_link -> imu_link translation (m)
BASE_TO_IMU = (-2.71 / 2.0 - 0.05, 0.32, 0.93)


def read_timestamps(path: str | Path) -> np.ndarray:
    """(N,) int64 UTC nanoseconds of a KITTI raw ``timestamps.txt`` (``YYYY-MM-DD HH:MM:SS.fffffffff`` a line).

    Raises:
        FileNotFoundError: the file is missing; ValueError: naming the file and line of a malformed stamp.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI raw timestamps not found: {path}")
    out = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        day, _, frac = line.strip().partition(".")
        try:
            whole = dt.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
            if not frac.isdigit() or len(frac) > 9:
                raise ValueError(frac)
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: expected 'YYYY-MM-DD HH:MM:SS.fffffffff', got {line.strip()!r}"
            ) from None
        out.append(int(whole.timestamp()) * 1_000_000_000 + int(frac.ljust(9, "0")))
    return np.asarray(out, np.int64)


def camera_from_imu(date_dir: Path, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """pykitti's ``T_camN_imu`` (4, 4) per camera frame name: IMU -> rectified camera N, i.e. the translation
    ``P_rect_0N[0, 3] / P_rect_0N[0, 0]`` after ``R_rect_00 @ calib_velo_to_cam`` after ``calib_imu_to_velo``."""
    T_velo_imu = read_imu_to_velo(date_dir)
    out = {}
    for n, frame in enumerate(CAMERA_FRAMES):
        calib = read_raw_calib(date_dir, image_size, camera=f"0{n}")  # T_cam_lidar = R_rect_00 @ velo_to_cam
        shift = np.eye(4)
        shift[0, 3] = calib.P[0, 3] / calib.P[0, 0]
        out[frame] = shift @ calib.T_cam_lidar @ T_velo_imu
    return out


def _frames(folder: Path, suffix: str) -> tuple[list[Path], np.ndarray]:
    """The data files of a sensor folder and their (N,) ns stamps from its ``timestamps.txt``."""
    files = sorted((folder / "data").glob(f"*{suffix}"))
    stamps_file = folder / "timestamps.txt"
    stamps = read_timestamps(stamps_file)
    if not files:
        raise FileNotFoundError(f"no {suffix} file in {folder / 'data'}")
    if len(stamps) != len(files):
        raise ValueError(f"{stamps_file}: {len(stamps)} timestamps, expected one per file of {folder / 'data'} "
                         f"({len(files)})")  # fmt: skip
    return files, stamps


def write_raw_bag(
    root: str | Path, drive: str, out: str | Path, frames: int | None = None, progress: bool = True
) -> int:
    """Write drive ``drive`` (``2011_09_26_drive_0001`` with or without ``_sync``) of the KITTI raw tree ``root``
    as a ROS 1 bag ``out``; returns the number of frames (LiDAR scans) written.

    Raises:
        FileNotFoundError / ValueError: naming the missing or malformed file; FileExistsError: ``out`` exists.
    """
    from tqdm import tqdm

    name = drive if drive.endswith("_sync") else f"{drive}_sync"
    drive_dir = Path(root) / name[:10] / name
    if not drive_dir.is_dir():
        raise FileNotFoundError(f"KITTI raw drive folder not found: {drive_dir}")
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    date_dir = drive_dir.parent
    images, image_stamps = _frames(drive_dir / "image_02", ".png")
    scans, scan_stamps = _frames(drive_dir / "velodyne_points", ".bin")
    packets_files, oxts_stamps = _frames(drive_dir / "oxts", ".txt")
    if not len(images) == len(scans) == len(packets_files):
        raise ValueError(f"{drive_dir}: image_02 has {len(images)} frames, velodyne_points {len(scans)}, oxts "
                         f"{len(packets_files)}; a synced drive has one of each per frame")  # fmt: skip
    n = min(len(scans), frames or len(scans))
    packets = np.stack([read_oxts(p) for p in packets_files[:n]])  # (n, 30)
    poses = oxts_poses(packets)  # (n, 4, 4) T_world_imu
    cams = camera_from_imu(date_dir, read_image(images[0]).shape[:2])
    cam_path = date_dir / "calib_cam_to_cam.txt"
    calib = read_calib_file(cam_path)
    P = calib_matrix(calib, "P_rect_02", (3, 4), cam_path)
    K = calib_matrix(calib, "K_02", (3, 3), cam_path) if "K_02" in calib else P[:, :3]
    D = calib["D_02"] if "D_02" in calib else np.zeros(5)
    R = calib_matrix(calib, "R_rect_02", (3, 3), cam_path)
    base_to_imu = np.eye(4)
    base_to_imu[:3, 3] = BASE_TO_IMU
    static = [(BASE_FRAME, IMU_FRAME, base_to_imu), (IMU_FRAME, VELO_FRAME, np.linalg.inv(read_imu_to_velo(date_dir)))]
    static += [(IMU_FRAME, frame, np.linalg.inv(T)) for frame, T in cams.items()]
    with BagWriter(out, ros1=True) as bag:
        for i in tqdm(range(n), desc=f"occle-kitti2bag {name}", unit="frame", disable=not progress):
            s_oxts, s_img, s_scan = int(oxts_stamps[i]), int(image_stamps[i]), int(scan_stamps[i])
            bag.write("/tf_static", bag.tf(static, s_oxts), s_oxts)
            bag.write("/tf", bag.tf([(WORLD_FRAME, BASE_FRAME, poses[i])], s_oxts), s_oxts)
            for topic, msg in _oxts_messages(bag, packets[i], s_oxts):
                bag.write(topic, msg, s_oxts)
            rgb = read_image(images[i])  # (H, W, 3)
            bag.write(TOPICS["image"], bag.image(rgb[:, :, ::-1], "bgr8", s_img, CAMERA_FRAME), s_img)
            info = bag.camera_info(K, P, rgb.shape[:2], s_img, CAMERA_FRAME, D=D, R=R)
            bag.write(TOPICS["camera_info"], info, s_img)
            cloud = bag.pointcloud(read_points(scans[i]), ("x", "y", "z", "i"), s_scan, VELO_FRAME)
            bag.write(TOPICS["points"], cloud, s_scan)
    return n


def _oxts_messages(bag: BagWriter, p: np.ndarray, stamp: int) -> list[tuple[str, object]]:
    """kitti2bag's IMU, GPS fix and GPS velocity messages of one (30,) OXTS packet, frame ``imu_link``."""
    t = bag.t
    vec = t["geometry_msgs/msg/Vector3"]
    w, x, y, z = euler2quat(p[3], p[4], p[5], "sxyz")  # of roll, pitch, yaw
    angular = vec(x=p[20], y=p[21], z=p[22])  # wf, wl, wu
    imu = t["sensor_msgs/msg/Imu"](
        header=bag.header(stamp, IMU_FRAME), orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
        orientation_covariance=np.zeros(9), angular_velocity=angular, angular_velocity_covariance=np.zeros(9),
        linear_acceleration=vec(x=p[14], y=p[15], z=p[16]), linear_acceleration_covariance=np.zeros(9),
    )  # fmt: skip
    fix = t["sensor_msgs/msg/NavSatFix"](
        header=bag.header(stamp, IMU_FRAME), status=t["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
        latitude=p[0], longitude=p[1], altitude=p[2], position_covariance=np.zeros(9), position_covariance_type=0,
    )  # fmt: skip
    twist = t["geometry_msgs/msg/Twist"](linear=vec(x=p[8], y=p[9], z=p[10]), angular=angular)  # vf, vl, vu
    vel = t["geometry_msgs/msg/TwistStamped"](header=bag.header(stamp, IMU_FRAME), twist=twist)
    return [(TOPICS["imu"], imu), (TOPICS["gps_fix"], fix), (TOPICS["gps_vel"], vel)]
