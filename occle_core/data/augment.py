"""Training augmentation: the whole frame moved up or down by a whole number of voxel layers.

A network trained with one LiDAR mounting height learns "the road lies in the lowest layer" instead of "the road is
where the low returns are". On a synthetic scene seen from 1.55 m instead of the training rig's 1.73 m (the road one
layer higher in the grid) the shipped model's ground consistency fell from 0.91 to 0.59 and its hit recall from
0.84 to 0.71 (``docs/real_frames.md``, "Mounting height"); real KITTI frames put the road partly in the second
layer by sensor height and road grade. Moving the frame by ``k`` layers (``k * voxel_size`` metres along z) is
exact for voxel labels: the labels, the invalid / label / camera masks shift by ``k`` along Z (layers that move in
from outside the grid are ignored), the points and the LiDAR origin move by ``k * voxel_size``, and every camera's
``T_cam<-grid`` takes the inverse move so that each point still projects onto the same pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from occle_core.data.sample import Sample, lidar_origin
from occle_core.geometry import Calib
from occle_core.labels import IGNORE_INDEX


def _shift_z(volume: np.ndarray | None, layers: int, fill: int | bool) -> np.ndarray | None:
    """``volume`` (X, Y, Z) moved ``layers`` along Z (positive = up), vacated layers set to ``fill``."""
    if volume is None or layers == 0:
        return volume
    out = np.full_like(volume, fill)
    depth = volume.shape[2]
    if abs(layers) < depth:
        if layers > 0:
            out[:, :, layers:] = volume[:, :, : depth - layers]
        else:
            out[:, :, : depth + layers] = volume[:, :, -layers:]
    return out


def shift_height(sample: Sample, layers: int, voxel_size: float) -> Sample:
    """``sample`` moved up by ``layers`` voxel layers (down when negative); a new sample, the input is unchanged.

    Args:
        sample: a frame in its grid frame.
        layers: whole layers to move (0 returns ``sample`` itself).
        voxel_size: the grid's voxel edge in metres.
    """
    if layers == 0:
        return sample
    dz = float(layers) * float(voxel_size)
    move = np.eye(4)
    move[2, 3] = -dz  # new grid frame -> old grid frame
    points = sample.points.copy()
    points[:, 2] += dz
    cameras = [
        dataclasses.replace(v, calib=Calib(v.calib.P, v.calib.T_cam_lidar @ move, v.calib.image_size))
        for v in sample.cameras
    ]
    ox, oy, oz = lidar_origin(sample)
    extras = {**sample.extras, "lidar_origin": (ox, oy, oz + dz)}
    return dataclasses.replace(
        sample,
        points=points,
        cameras=cameras,
        voxel_labels=_shift_z(sample.voxel_labels, layers, IGNORE_INDEX),  # moved in from outside: ignored
        invalid=_shift_z(sample.invalid, layers, True),
        camera_mask=_shift_z(sample.camera_mask, layers, False),
        label_mask=_shift_z(sample.label_mask, layers, False),
        pose=None if sample.pose is None else sample.pose @ move,
        extras=extras,
    )


def draw_height_shift(max_layers: int, rng: np.random.Generator | None = None) -> int:
    """A shift drawn uniformly from ``-max_layers .. max_layers`` (numpy's global generator when ``rng`` is None,
    which :class:`~occle_core.data.factory.TrainFrames` seeds per frame and epoch)."""
    if max_layers < 0:
        raise ValueError(f"data.height_shift must be >= 0 layers, got {max_layers}")
    if max_layers == 0:
        return 0
    draw = np.random.randint if rng is None else rng.integers
    return int(draw(-max_layers, max_layers + 1))
