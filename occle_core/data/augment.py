"""Training augmentation: the whole frame moved up or down by a whole number of voxel layers, or mirrored.

A network trained with one LiDAR mounting height learns "the road lies in the lowest layer" instead of "the road is
where the low returns are". On a synthetic scene seen from 1.55 m instead of the training rig's 1.73 m (the road one
layer higher in the grid) the shipped model's ground consistency fell from 0.91 to 0.59 and its hit recall from
0.84 to 0.71 (``docs/real_frames.md``, "Mounting height"); real KITTI frames put the road partly in the second
layer by sensor height and road grade. Moving the frame by ``k`` layers (``k * voxel_size`` metres along z) is
exact for voxel labels: the labels, the invalid / label / camera masks shift by ``k`` along Z (layers that move in
from outside the grid are ignored), the points and the LiDAR origin move by ``k * voxel_size``, and every camera's
``T_cam<-grid`` takes the inverse move so that each point still projects onto the same pixel.

A second augmentation mirrors the frame left to right (``data.flip``, the share of frames mirrored): the world is
reflected about the grid's centre line ``y = y_c`` and every image flipped horizontally. It is exact too: the
reflection maps voxels onto voxels (index ``j -> Y - 1 - j``), and with ``F`` the image flip (``u -> W - u``),
``D = diag(-1, 1, 1)`` in the camera frame and ``M`` the reflection, ``P' = F P D`` and ``T' = D T M`` project each
mirrored point onto the flipped pixel of the original (``P' T' = F P T M``; ``D T M`` is a proper rigid motion,
``F P D`` keeps positive focal lengths). With four real frames to adapt on, a mirrored street is a new street.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from occle_core.config import DataConfig
from occle_core.data.sample import Sample, lidar_origin
from occle_core.geometry import Calib, VoxelGrid
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


def mirror_y(sample: Sample, grid: VoxelGrid) -> Sample:
    """``sample`` mirrored left to right about the centre line of ``grid`` (``y = origin_y + Y * voxel / 2``, the
    LiDAR's x axis on the KITTI and Occ3D grids): points, LiDAR origin and pose reflected, volumes flipped along Y,
    every camera's image and pseudo labels flipped horizontally with the calibration that projects the mirrored
    world onto them (module docstring). A new sample, the input is unchanged. Its pose is the original one composed
    with the reflection (improper: it maps the mirrored grid onto the real world); past scans are merged in by the
    readers before augmentation, so nothing after it chains poses.

    Raises:
        ValueError: a camera's image or pseudo labels do not have the width of its calibration.
    """
    yc = grid.origin[1] + grid.shape[1] * grid.voxel_size / 2.0
    reflect = np.eye(4)
    reflect[1, 1], reflect[1, 3] = -1.0, 2.0 * yc  # new grid frame -> old (an involution)
    cam_mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    points = sample.points.copy()
    points[:, 1] = 2.0 * yc - points[:, 1]

    def flip(array: np.ndarray | None) -> np.ndarray | None:  # along axis 1: Y of a volume, u of an image
        return None if array is None else np.ascontiguousarray(array[:, ::-1])

    cameras = []
    for v in sample.cameras:
        h, w = v.calib.image_size
        for field, image in (("image", v.image), ("pseudo2d", v.pseudo2d)):
            if image is not None and image.shape[:2] != (h, w):
                raise ValueError(
                    f"data.flip: camera {v.name} {field} is {image.shape[1]} x {image.shape[0]} pixels, its "
                    f"calibration's image_size {w} x {h}: a flipped image would not match its projection"
                )
        flip_u = np.array([[-1.0, 0.0, float(w)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # u -> W - u
        calib = Calib(flip_u @ v.calib.P @ cam_mirror, cam_mirror @ v.calib.T_cam_lidar @ reflect, (h, w))
        cameras.append(dataclasses.replace(v, image=flip(v.image), calib=calib, pseudo2d=flip(v.pseudo2d)))
    ox, oy, oz = lidar_origin(sample)
    extras = {**sample.extras, "lidar_origin": (ox, 2.0 * yc - oy, oz)}
    return dataclasses.replace(
        sample,
        points=points,
        cameras=cameras,
        voxel_labels=flip(sample.voxel_labels),
        invalid=flip(sample.invalid),
        camera_mask=flip(sample.camera_mask),
        label_mask=flip(sample.label_mask),
        pose=None if sample.pose is None else sample.pose @ reflect,
        extras=extras,
    )


@dataclass(frozen=True)
class Augmentation:
    """The augmentations of a training run: ``data.height_shift`` (layers) and ``data.flip`` (the share of frames
    mirrored) on ``grid``. :meth:`draw` then :meth:`apply`; the draw uses numpy's global generator, which the
    datasets seed per frame and epoch (:class:`~occle_core.data.factory.TrainFrames`,
    :class:`~occle_core.adapt.AdaptFrames`)."""

    grid: VoxelGrid
    height_shift: int = 0
    flip: float = 0.0

    @classmethod
    def of(cls, data: DataConfig) -> Augmentation:
        """The augmentations of ``data``."""
        return cls(data.voxel_grid(), int(data.height_shift), float(data.flip))

    def draw(self) -> tuple[int, bool]:
        """``(layers, mirrored)`` of one frame. With ``flip`` 0 nothing more is drawn than the height shift, so a
        run without the flip reads its frames exactly as before it existed."""
        layers = draw_height_shift(self.height_shift)
        return layers, bool(self.flip > 0 and np.random.random() < self.flip)

    def apply(self, sample: Sample, drawn: tuple[int, bool]) -> Sample:
        """``sample`` shifted by ``drawn[0]`` layers, then mirrored when ``drawn[1]``."""
        layers, mirrored = drawn
        sample = shift_height(sample, layers, self.grid.voxel_size)
        return mirror_y(sample, self.grid) if mirrored else sample
