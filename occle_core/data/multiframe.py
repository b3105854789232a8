"""Multi-frame LiDAR input (``data.past_frames``): each frame's scan plus the K previous scans of its sequence,
moved into the current LiDAR frame through the poses, with a time-offset column.

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

Only past *scans* are merged; past images are not used, and labels are the current frame's. A past image costs a
pass of the image encoder (``paper``: about 110 ms per 188 x 620 image on one CPU thread) and a lift into the grid
(``tiny``: five images instead of one took a forward from about 0.6 to 0.8 s on one thread), and its features
land on the wrong voxels wherever something moved; a past scan costs a point transform and a few more points to
voxelise, and the time channels say which points are old.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from occle_core.data.sample import Sample
from occle_core.data.semantic_kitti import SemanticKittiDataset, read_points, read_times


def move_points(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(N, >=3) points -> a float32 copy with x, y, z mapped by the (4, 4) transform ``T`` (other columns kept)."""
    out = np.array(points, np.float32)
    xyz = np.asarray(points[:, :3], np.float64)
    out[:, :3] = xyz @ T[:3, :3].T + T[:3, 3]
    return out


class MultiFrameDataset(Dataset):
    """A SemanticKITTI reader whose samples carry the ``past_frames`` previous scans too (module docstring).

    Args:
        base: the reader (its samples and frame list are used as they are).
        past_frames: K >= 0; 0 returns the reader's samples unchanged.

    Raises:
        ValueError: K < 0, or K > 0 and a sequence without ``poses.txt`` or ``times.txt``.
    """

    def __init__(self, base: SemanticKittiDataset, past_frames: int) -> None:
        if int(past_frames) != past_frames or past_frames < 0:
            raise ValueError(f"past_frames must be an integer >= 0, got {past_frames!r}")
        self.base = base
        self.past_frames = int(past_frames)
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
        sample.extras["dt_column"] = 4
        return sample
