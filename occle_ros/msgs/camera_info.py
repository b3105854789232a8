"""``sensor_msgs/CameraInfo`` <-> the (3, 4) projection matrix of a rectified camera."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from occle_ros.msgs.base import ConversionError, to_time


def camera_info_projection(msg: CameraInfo) -> np.ndarray:
    """The (3, 4) projection matrix of a ``CameraInfo``: ``P``, or ``[K | 0]`` when P is all zero.

    Raises:
        ConversionError: non-finite values, or a zero/negative focal length.
    """
    P = np.asarray(msg.p, np.float64).reshape(3, 4)
    if not np.isfinite(P).all():
        raise ConversionError("CameraInfo.p has non-finite values (expected a finite 3x4 projection matrix)")
    if not P.any():
        K = np.asarray(msg.k, np.float64).reshape(3, 3)
        if not np.isfinite(K).all():
            raise ConversionError("CameraInfo.k has non-finite values and CameraInfo.p is all zero")
        P = np.concatenate([K, np.zeros((3, 1))], axis=1)
    if P[0, 0] <= 0 or P[1, 1] <= 0:
        raise ConversionError(
            f"CameraInfo.p has focal lengths fx={P[0, 0]}, fy={P[1, 1]} (expected > 0; p and k are zero or invalid)"
        )
    return P


def projection_to_camera_info(
    P: np.ndarray, image_size: tuple[int, int], frame_id: str = "", stamp: Time | int | None = None
) -> CameraInfo:
    """A ``CameraInfo`` (plumb_bob, zero distortion, identity R) for a rectified (3, 4) projection P and (H, W)."""
    P = np.asarray(P, np.float64).reshape(3, 4)
    msg = CameraInfo()
    msg.header = Header(frame_id=frame_id, stamp=to_time(stamp))
    msg.height, msg.width = int(image_size[0]), int(image_size[1])
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = P[:, :3].reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = P.reshape(-1).tolist()
    return msg
