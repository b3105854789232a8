"""Multi-frame input (``data.past_frames``, ``data.past_images``): each frame's scan plus the K previous scans of
its sequence, moved into the current LiDAR frame through the poses, with a time-offset column; optionally the M <= K
previous images of the front camera as extra camera views.

SemanticKITTI's ``poses.txt`` holds the pose of camera 0 in the first camera-0 frame, and ``Tr`` of
``calib.txt`` maps velodyne to camera 0, so the LiDAR pose (LiDAR of frame ``t`` -> first LiDAR frame) is
``inv(Tr) @ pose_t @ Tr`` (:func:`occle_core.data.semantic_kitti.lidar_poses`; as the SemanticKITTI API's
``generate_sequential.py`` computes it). A point ``x`` of scan ``j`` lies at ``inv(L_i) @ L_j @ x`` in the frame
of scan ``i``. Moving objects smear along their path: only the static world lines up.

The merged points are (N, 5) float32 ``x, y, z, intensity, dt``: ``dt = time_j - time_i`` in seconds from
``times.txt`` (0 for the current scan, negative for the past ones; ``Sample.extras["dt_column"] = 4``), the current
scan's rows first and ``Sample.extras["current_points"]`` their number (targets that need the frame's own rays or a
single sensor origin, the lifted pseudo labels and the LiDAR free space, read only those rows: ``data/batch.py``).
Frames near the start of a sequence get the past scans there are. The network sees ``dt`` when
``model.time_features`` is set (the default when ``data.past_frames`` > 0): two more voxel channels, the share of
current-scan points and their mean age (:func:`occle_core.model.lidar_encoder.voxelize_points`).

Past images (``data.past_images`` = M): the image of frame ``j = i - m`` (m = 1..M) is appended to the sample's
cameras as the view ``<front>@-m`` (``image_2@-1``, ...; :func:`~occle_core.data.sample.past_view_names`, the names
:meth:`~occle_core.config.DataConfig.camera_names` appends to the camera set) whose calibration maps the CURRENT grid
frame to the past image's pixels: ``T_cam_lidar @ inv(L_j) @ L_i`` (:func:`past_view_calib`), so lifting,
projection and the 2D losses treat it as one more camera of the frame. It carries frame ``j``'s own 2D pseudo
labels when the pseudo folder has them (they label that image; the lifted 3D pseudo labels take the current camera
first, :func:`~occle_core.pseudo.lift.lift_views_to_voxels`). Frames near the start of a sequence repeat the oldest
frame there is (frame 0: its own image, an identity transform). Only the static world lines up: a moving object's
past image features land where it was, not where it is, and the projection loss compares the current prediction
with where things were in the past image; the lifting's masked mean does not tell past views from the current one.
A past image costs one more pass of the shared image encoder and one more lift into the grid (``tiny``, 1 CPU
thread: see docs/architecture.md); a past scan costs a point transform and a few more points to voxelise.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from occle_core.data.sample import DT_COLUMN, CameraView, Sample, past_view_names
from occle_core.data.semantic_kitti import SemanticKittiDataset, read_points, read_times
from occle_core.geometry import Calib


def move_points(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(N, >=3) points -> a float32 copy with x, y, z mapped by the (4, 4) transform ``T`` (other columns kept)."""
    out = np.array(points, np.float32)
    xyz = np.asarray(points[:, :3], np.float64)
    out[:, :3] = xyz @ T[:3, :3].T + T[:3, 3]
    return out


def past_view_calib(calib: Calib, current_pose: np.ndarray, past_pose: np.ndarray) -> Calib:
    """The calibration of a past frame's camera seen from the current frame: ``calib`` (the past image's own, its
    ``T_cam_lidar`` from that frame's LiDAR) with ``T_cam_lidar @ inv(past_pose) @ current_pose``, so a current-frame
    point ``x`` lands on the pixel ``P @ T_cam_lidar @ inv(L_j) @ L_i @ x`` (``L``: (4, 4) LiDAR poses, LiDAR -> the
    sequence's first LiDAR frame; ``current_pose`` = ``L_i``, ``past_pose`` = ``L_j``)."""
    to_past = np.linalg.inv(np.asarray(past_pose, np.float64)) @ np.asarray(current_pose, np.float64)  # (4, 4)
    return Calib(calib.P, calib.T_cam_lidar @ to_past, calib.image_size)


class MultiFrameDataset(Dataset):
    """A SemanticKITTI reader whose samples carry the ``past_frames`` previous scans and the ``past_images``
    previous front-camera views too (module docstring).

    Args:
        base: the reader (its samples and frame list are used as they are).
        past_frames: K >= 0; 0 returns the reader's samples unchanged.
        past_images: M in [0, K]: the views ``<front>@-1`` .. ``<front>@-M`` appended to each sample's cameras.

    Raises:
        ValueError: K < 0, M outside [0, K], or K > 0 and a sequence without ``poses.txt`` or ``times.txt``.
    """

    def __init__(self, base: SemanticKittiDataset, past_frames: int, past_images: int = 0) -> None:
        if int(past_frames) != past_frames or past_frames < 0:
            raise ValueError(f"past_frames must be an integer >= 0, got {past_frames!r}")
        if int(past_images) != past_images or not 0 <= past_images <= past_frames:
            raise ValueError(
                f"past_images must be an integer in [0, past_frames = {past_frames}] (each past image comes with its "
                f"scan), got {past_images!r}"
            )
        self.base = base
        self.past_frames = int(past_frames)
        self.past_images = int(past_images)
        self._times: dict[str, np.ndarray] = {}
        if self.past_frames == 0:
            return
        for seq in sorted({s for s, _ in base.frames}):
            folder = base.sequence_folder(seq)
            if base.lidar_poses(seq) is None:
                raise ValueError(f"data.past_frames > 0 needs {folder / 'poses.txt'} (not found)")
            if not (folder / "times.txt").is_file():
                raise ValueError(f"data.past_frames > 0 needs {folder / 'times.txt'} (not found)")
            self._times[seq] = read_times(folder / "times.txt")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Sample:
        sample = self.base[index]
        if self.past_frames == 0:
            return sample
        seq, name = self.base.frames[index]
        i = int(name)
        poses, times = self.base.lidar_poses(seq), self._times[seq]
        if len(times) <= i:
            raise ValueError(
                f"{self.base.sequence_folder(seq) / 'times.txt'}: {len(times)} times, frame {name} needs {i + 1}"
            )
        to_current = np.linalg.inv(poses[i])
        parts = [np.concatenate([sample.points[:, :4], np.zeros((len(sample.points), 1), np.float32)], axis=1)]
        for j in range(i - 1, max(i - self.past_frames, 0) - 1, -1):
            past = read_points(self.base.sequence_folder(seq) / "velodyne" / f"{j:06d}.bin")  # (n, 4)
            moved = move_points(past, to_current @ poses[j])
            parts.append(np.concatenate([moved, np.full((len(moved), 1), times[j] - times[i], np.float32)], axis=1))
        sample.points = np.concatenate(parts, axis=0).astype(np.float32, copy=False)  # (N, 5)
        sample.extras["current_points"] = len(parts[0])
        sample.extras["dt_column"] = DT_COLUMN
        sample.cameras += self.past_views(seq, i, sample.cameras[0].name)
        return sample

    def past_views(self, sequence: str, frame: int, camera: str = "image_2") -> list[CameraView]:
        """The ``past_images`` views of frame ``frame`` of ``sequence`` (module docstring): the image, pseudo labels
        and :func:`past_view_calib` of frame ``max(frame - m, 0)`` named ``<camera>@-m``, m = 1..M."""
        poses = self.base.lidar_poses(sequence)
        views = []
        for m, name in enumerate(past_view_names(camera, self.past_images), 1):
            j = max(frame - m, 0)
            own = self.base.camera_view(sequence, f"{j:06d}")
            views.append(CameraView(name, own.image, past_view_calib(own.calib, poses[frame], poses[j]), own.pseudo2d))
        return views
