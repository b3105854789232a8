"""Run by test_nuscenes.py under an interpreter that has the official nuscenes-devkit; prints JSON.

Usage: ``python helpers_nuscenes_devkit.py DATAROOT VERSION NSWEEPS MIN_DIST``. For every sample it reports, computed
with the devkit only (``NuScenes.get``, ``LidarPointCloud``, ``transform_matrix``, ``view_points``, the explorer's
``map_pointcloud_to_image``):
- ``ego``: the key-frame LIDAR_TOP points in the ego frame (the first two steps of ``map_pointcloud_to_image``);
- ``cams[CH]["M"]``: the 3x4 ego(t_lidar) -> pixel matrix chained as ``map_pointcloud_to_image`` does
  (ego -> global at the LiDAR time, global -> ego at the camera time, ego -> camera, intrinsics);
- ``cams[CH]["cam"]``: the key-frame points in that camera, transformed step by step as it does;
- ``cams[CH]["pix"]``: the pixels ``map_pointcloud_to_image`` returns (points kept by its own filter);
- ``multi`` / ``times``: ``LidarPointCloud.from_file_multisweep`` moved from the reference sensor to the ego frame.
"""

from __future__ import annotations

import json
import os.path as osp
import sys

import numpy as np
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def _pose(rec: dict, inverse: bool = False) -> np.ndarray:
    return transform_matrix(rec["translation"], Quaternion(rec["rotation"]), inverse=inverse)


def main(root: str, version: str, nsweeps: int, min_dist: float) -> dict:
    nusc = NuScenes(version=version, dataroot=root, verbose=False)
    out = {}
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        lidar_cs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        lidar_pose = nusc.get("ego_pose", lidar["ego_pose_token"])
        pc = LidarPointCloud.from_file(osp.join(root, lidar["filename"]))
        pc.rotate(Quaternion(lidar_cs["rotation"]).rotation_matrix)
        pc.translate(np.array(lidar_cs["translation"]))
        ego = pc.points.copy()  # (4, N) x, y, z, intensity in the ego frame at the LiDAR time
        cams = {}
        for ch in CAMERAS:
            cam = nusc.get("sample_data", sample["data"][ch])
            cam_cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
            cam_pose = nusc.get("ego_pose", cam["ego_pose_token"])
            K = np.array(cam_cs["camera_intrinsic"])
            chain = _pose(cam_cs, inverse=True) @ _pose(cam_pose, inverse=True) @ _pose(lidar_pose)
            step = LidarPointCloud(ego.copy())
            step.rotate(Quaternion(lidar_pose["rotation"]).rotation_matrix)
            step.translate(np.array(lidar_pose["translation"]))
            step.translate(-np.array(cam_pose["translation"]))
            step.rotate(Quaternion(cam_pose["rotation"]).rotation_matrix.T)
            step.translate(-np.array(cam_cs["translation"]))
            step.rotate(Quaternion(cam_cs["rotation"]).rotation_matrix.T)
            pix, _, _ = nusc.explorer.map_pointcloud_to_image(lidar["token"], cam["token"])
            cams[ch] = {"M": (K @ chain[:3]).tolist(), "cam": step.points[:3].tolist(), "pix": pix[:2].tolist()}
        multi, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps, min_dist)
        multi.transform(_pose(lidar_cs))
        out[sample["token"]] = {"ego": ego.tolist(), "cams": cams, "multi": multi.points.tolist(),
                                "times": times[0].tolist()}  # fmt: skip
    return out


if __name__ == "__main__":
    json.dump(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])), sys.stdout)
