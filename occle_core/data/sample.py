"""The typed sample every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.geometry import Calib


@dataclass
class Sample:
    """One frame: camera image, LiDAR scan, calibration and (optional) labels.

    Attributes:
        frame_id: ``"<sequence>/<frame>"`` or a dataset token.
        image: (H, W, 3) uint8 RGB.
        points: (N, 4) float32 x, y, z, intensity in the LiDAR frame.
        calib: camera model for ``image``.
        voxel_labels: (X, Y, Z) uint8 learning classes, 255 = ignored; None when unlabelled.
        invalid: (X, Y, Z) bool voxels never observed (excluded from losses/metrics); None if unknown.
        pseudo2d: (H, W) uint8 2D pseudo labels (learning classes, 255 = none); None when absent.
        camera_mask: (X, Y, Z) bool voxels seen by the camera (Occ3D); None when absent.
        pose: (4, 4) LiDAR-to-world pose; None when absent.
        label_mask: (X, Y, Z) bool voxels whose label may supervise training (the label budget);
            None means every valid labelled voxel.
    """

    frame_id: str
    image: np.ndarray
    points: np.ndarray
    calib: Calib
    voxel_labels: np.ndarray | None = None
    invalid: np.ndarray | None = None
    pseudo2d: np.ndarray | None = None
    camera_mask: np.ndarray | None = None
    pose: np.ndarray | None = None
    label_mask: np.ndarray | None = None
