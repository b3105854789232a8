"""Semantic branch: image features lifted into the voxel grid along camera rays, fused with LiDAR features.

Each voxel centre is projected with the frame's ``lidar_to_image`` matrix; the image feature at that pixel is
sampled bilinearly (``grid_sample``), so every voxel on one camera ray receives the same feature. Voxels
behind the camera or outside the image get zeros and a 0 in the validity channel. With several cameras
(:func:`lift_cameras`) a voxel takes the mean of the features of the cameras in whose frustum it lands (a masked
mean; validity 1 where at least one camera sees it), so one lifted grid covers every camera. The lifted features and
the LiDAR features are fused by 3D convolutions into the semantic feature grid, and a 3D semantic head
predicts class logits (supervised by the lifted 3D pseudo labels).

Which encoders feed it is ``model.shared_encoders``: true, the network's one image encoder and one LiDAR encoder
(shared with the geometric branch); false (the published layout), encoders of its own: a 2D UNet
(:class:`~occle_core.model.unet2d.UNet2D`, also the source of ``sem2d``) and a sparse 3D UNet
(:class:`~occle_core.model.sparse_unet3d.SparseUNet3D`), held by the network as ``semantic_image_unet`` /
``semantic_lidar_unet`` and counted in the ``semantic_branch`` parameter group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.model.layers import cat_cl, context_block, conv3d_bn_relu, to_cl

MIN_DEPTH = 0.1  # metres in front of the camera


def project_points(centers: Tensor, lidar_to_image: Tensor) -> tuple[Tensor, Tensor]:
    """Project LiDAR-frame points with per-frame matrices.

    Args:
        centers: (V, 3) points.
        lidar_to_image: (B, 3, 4).

    Returns:
        uv (B, V, 2) pixel coordinates (column, row), depth (B, V).
    """
    dtype = torch.float64 if centers.dtype == torch.float64 else torch.float32
    with torch.autocast(centers.device.type, enabled=False):  # pixel coordinates need float32 (not fp16/bf16)
        M = lidar_to_image.to(dtype)
        hom = torch.einsum("vc,brc->bvr", centers.to(dtype), M[:, :, :3]) + M[:, None, :, 3]  # (B, V, 3)
        depth = hom[..., 2]
        uv = hom[..., :2] / depth.clamp_min(1e-6).unsqueeze(-1)
    return uv, depth


def lift_image_features(
    feat2d: Tensor, centers: Tensor, lidar_to_image: Tensor, image_hw: tuple[int, int], grid_shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """Sample image features at the projection of every voxel centre.

    Args:
        feat2d: (B, C, h, w) features covering the whole image (any stride).
        centers: (X*Y*Z, 3) voxel centres in the LiDAR frame, C-order of ``grid_shape``.
        lidar_to_image: (B, 3, 4) LiDAR -> pixels of the image of size ``image_hw`` = (H, W).
        grid_shape: (X, Y, Z).

    Returns:
        features (B, C, X, Y, Z) (channels-last memory), zero outside the camera frustum, and validity
        (B, 1, X, Y, Z) float.
    """
    B, C = feat2d.shape[:2]
    H, W = image_hw
    uv, depth = project_points(centers, lidar_to_image)  # (B, V, 2), (B, V)
    valid = (depth > MIN_DEPTH) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    # pixel i covers [i, i + 1) (as in Calib.project); image edges 0 and W map to -1 and 1 (align_corners=False)
    norm = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], -1)  # (B, V, 2)
    norm = torch.where(valid.unsqueeze(-1), norm, torch.full_like(norm, -2.0)).to(feat2d.dtype)
    sampled = F.grid_sample(feat2d, norm.unsqueeze(1), mode="bilinear", padding_mode="zeros", align_corners=False)
    vmask = valid.to(feat2d.dtype).view(B, 1, *grid_shape)
    return to_cl(sampled.view(B, C, *grid_shape) * vmask), vmask


def lift_cameras(
    feat2d: Tensor,
    centers: Tensor,
    lidar_to_image: Tensor,
    num_cameras: int,
    image_hw: tuple[int, int],
    grid_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """Lift the features of N cameras per frame into one grid: the masked mean over the cameras that see a voxel.

    Why a masked mean and not a visibility weight: the lifting has no depth (every voxel on a camera ray gets
    the same feature), so the only visibility known before the network's own occupancy is "inside the
    frustum"; weighting by a predicted occupancy would make the lifting depend on the output it feeds. The mean
    keeps the feature scale independent of how many cameras see a voxel (nuScenes frustums overlap only at
    their edges), and with one camera it is exactly :func:`lift_image_features`.

    Args:
        feat2d: (B*N, C, h, w) features of every camera, row ``b * N + n`` = camera ``n`` of frame ``b``.
        centers: (X*Y*Z, 3) voxel centres in the grid frame, C-order of ``grid_shape``.
        lidar_to_image: (B*N, 3, 4) grid frame -> pixels of each camera's image of size ``image_hw``.
        num_cameras: N.

    Returns:
        features (B, C, X, Y, Z) (channels-last memory): the mean over the cameras whose frustum holds the voxel
        centre, zero where none does; validity (B, 1, X, Y, Z) float, 1 where at least one camera sees it.
    """
    if num_cameras == 1:
        return lift_image_features(feat2d, centers, lidar_to_image, image_hw, grid_shape)
    B = feat2d.shape[0] // num_cameras
    feats = feat2d.view(B, num_cameras, *feat2d.shape[1:])  # (B, N, C, h, w)
    mats = lidar_to_image.view(B, num_cameras, 3, 4)
    total, count = lift_image_features(feats[:, 0], centers, mats[:, 0], image_hw, grid_shape)
    for n in range(1, num_cameras):  # one camera at a time: memory of two grids, not N
        f, v = lift_image_features(feats[:, n], centers, mats[:, n], image_hw, grid_shape)
        total, count = total + f, count + v  # (B, C, X, Y, Z), (B, 1, X, Y, Z) cameras seeing each voxel
    return to_cl(total / count.clamp_min(1.0)), (count > 0).to(total.dtype)


class SemanticBranch(nn.Module):
    """Fuse lifted image features with LiDAR features into a semantic feature grid + 3D semantic logits.

    Args:
        feat_dim: channels of the LiDAR grid, the lifted image grid and the output.
        num_classes: K.
        use_image: False: LiDAR features only (the LiDAR-only baseline).
    """

    def __init__(self, feat_dim: int, num_classes: int, use_image: bool = True) -> None:
        super().__init__()
        self.use_image = use_image
        cin = 2 * feat_dim + 1 if use_image else feat_dim
        self.fuse = conv3d_bn_relu(cin, feat_dim, 1)
        self.context = context_block(feat_dim)

    def forward(self, lidar: Tensor, image: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """lidar (B, F, X, Y, Z), lifted image (B, F, X, Y, Z) and its validity (B, 1, X, Y, Z) -> (B, F, X, Y, Z)."""
        if self.use_image:
            if image is None or valid is None:
                raise ValueError("SemanticBranch built with use_image=True needs the lifted image features")
            x = cat_cl([lidar, image, valid])  # (B, 2F + 1, X, Y, Z)
        else:
            x = to_cl(lidar)
        x = self.fuse(x)
        return x + self.context(x)
