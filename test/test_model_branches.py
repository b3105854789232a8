"""Image encoder, image-feature lifting, semantic branch, tri-plane geometric branch, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occle_core.geometry import Calib, VoxelGrid
from occle_core.model.geometric_branch import CrossPlaneAttention, GeometricBranch
from occle_core.model.image_encoder import ImageEncoder
from occle_core.model.layers import PointwiseConv3d, UpsampleHead, depth_to_space3d
from occle_core.model.occle import forward_camera
from occle_core.model.semantic_branch import SemanticBranch, lift_image_features

H, W = 24, 48


def test_image_encoder_shapes_and_gradients():
    enc = ImageEncoder([8, 16, 32], 12, 5)
    x = torch.randn(2, 3, 94, 310)  # sizes not divisible by the strides
    feat, logits = enc(x)
    assert feat.shape == (2, 12, 24, 78)  # stride 4 (ceil)
    assert logits.shape == (2, 5, 94, 310)
    logits.mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_paper_backbone_has_four_stages_of_two_blocks():
    enc = ImageEncoder([64, 128, 256, 512], 64, 20)
    assert len(enc.backbone.stages) == 4 and all(len(s) == 2 for s in enc.backbone.stages)


def test_pretrained_backbone_loads_from_a_local_file(tmp_path):
    a = ImageEncoder([8, 16], 8, 3)
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in a.backbone.state_dict().items()}}, path)
    b = ImageEncoder([8, 16], 8, 3, pretrained=str(path))
    for k, v in a.backbone.state_dict().items():
        assert torch.equal(v, b.backbone.state_dict()[k])
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ImageEncoder([8, 16], 8, 3, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="does not fit"):
        ImageEncoder([8, 32], 8, 3, pretrained=str(path))


def test_lifting_samples_the_pixel_each_voxel_projects_to():
    grid = VoxelGrid((-2.0, -3.0, -1.0), 0.5, (12, 12, 4))
    centers = torch.from_numpy(grid.centers().reshape(-1, 3))
    l2i = torch.from_numpy(forward_camera(H, W)).float()[None]
    # feature 0 = column coordinate of the pixel centre, feature 1 = row coordinate (pixel i covers [i, i + 1))
    cols = torch.arange(W, dtype=torch.float32) + 0.5
    rows = torch.arange(H, dtype=torch.float32) + 0.5
    feat = torch.stack([cols.expand(H, W), rows[:, None].expand(H, W)])[None]  # (1, 2, H, W)
    lifted, valid = lift_image_features(feat, centers, l2i, (H, W), grid.shape)
    assert lifted.shape == (1, 2, 12, 12, 4) and valid.shape == (1, 1, 12, 12, 4)
    T = np.eye(4)
    T[:3, :3] = [[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]]
    K = np.array([[W / 2.0, 0, W / 2.0, 0], [0, W / 2.0, H / 2.0, 0], [0, 0, 1.0, 0]])
    calib = Calib(K, T, (H, W))
    np.testing.assert_allclose(calib.lidar_to_image, forward_camera(H, W), atol=1e-12)
    uv, _, visible = calib.project(grid.centers().reshape(-1, 3))
    vis = torch.from_numpy(visible.reshape(grid.shape))
    assert torch.equal(valid[0, 0].bool(), vis)
    assert vis.any() and (~vis).any()  # voxels behind the camera (x < 0) and outside the image exist
    got = lifted[0].permute(1, 2, 3, 0)[vis]  # (n, 2)
    want = torch.from_numpy(uv.reshape(*grid.shape, 2))[vis]
    # bilinear interpolation of a linear ramp is exact away from the border pixels
    inner = (want[:, 0] > 1) & (want[:, 0] < W - 1) & (want[:, 1] > 1) & (want[:, 1] < H - 1)
    assert inner.sum() > 10
    torch.testing.assert_close(got[inner], want[inner], atol=1e-4, rtol=0)
    assert float(lifted[0][:, ~vis].abs().sum()) == 0.0


def test_semantic_branch_with_and_without_image():
    lidar = torch.randn(1, 8, 6, 6, 4)
    image = torch.randn(1, 8, 6, 6, 4)
    valid = (torch.rand(1, 1, 6, 6, 4) > 0.5).float()
    out = SemanticBranch(8, 5, use_image=True)(lidar, image, valid)
    assert out.shape == (1, 8, 6, 6, 4)
    assert SemanticBranch(8, 5, use_image=False)(lidar).shape == (1, 8, 6, 6, 4)
    with pytest.raises(ValueError, match="lifted image"):
        SemanticBranch(8, 5, use_image=True)(lidar)


def test_cross_plane_attention_is_axis_aligned():
    torch.manual_seed(0)
    att = CrossPlaneAttention(8, heads=2).eval()
    xy, xz, yz = torch.randn(1, 8, 10, 9), torch.randn(1, 8, 10, 4), torch.randn(1, 8, 9, 4)
    with torch.no_grad():
        a = att(xy, xz, yz)
        xz2 = xz.clone()
        xz2[:, :, 7] += 5.0  # change row x = 7 of the xz plane only
        b = att(xy, xz2, yz)
    per_x = (a[0] - b[0]).abs().amax(dim=(0, 1, 3))  # (X,) largest change of the xy plane per row x
    # xy cell (x, y) attends to xz row x only; the 3x3 conv after the attention spreads the change by one row
    assert float(per_x[6:9].min()) > 0
    assert float(per_x[:6].max()) == 0.0 and float(per_x[9]) == 0.0
    # every yz cell (y, z) attends to xz column z, which holds the changed cell (7, z)
    assert float((a[2] - b[2]).abs().amax(dim=(0, 1)).min()) > 0


def test_geometric_branch_shapes_and_lidar_only_mode():
    lidar = torch.randn(2, 16, 8, 8, 4)
    image = torch.randn(2, 16, 8, 8, 4)
    valid = torch.ones(2, 1, 8, 8, 4)
    g = GeometricBranch(16)
    out = g(lidar, image, valid)
    assert out.shape == (2, 16, 8, 8, 4)
    out.mean().backward()
    assert all(p.grad is not None for p in g.parameters())
    assert GeometricBranch(16, use_image=False)(lidar).shape == (2, 16, 8, 8, 4)


def test_upsample_head_is_a_transposed_convolution_and_coarse_is_its_average():
    torch.manual_seed(0)
    head = UpsampleHead(6, 3, 2)
    x = torch.randn(2, 6, 4, 5, 3)
    y = head(x)
    assert y.shape == (2, 3, 8, 10, 6) and y.is_contiguous()
    # reference: ConvTranspose3d(kernel=stride=2) with the same weights
    w = head.proj.weight.view(3, 2, 2, 2, 6).permute(4, 0, 1, 2, 3)  # (in, out, 2, 2, 2)
    ref = torch.nn.functional.conv_transpose3d(x, w, stride=2)
    bias = head.proj.bias.view(3, 2, 2, 2)
    ref = ref + bias.repeat(1, 4, 5, 3)[None]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.coarse(x), torch.nn.functional.avg_pool3d(y, 2), atol=1e-5, rtol=1e-5)


def test_depth_to_space_and_pointwise_conv():
    x = torch.arange(8.0).view(1, 8, 1, 1, 1)
    y = depth_to_space3d(x, 2)
    assert y[0, 0, 1, 0, 1] == 5.0 and y[0, 0, 0, 1, 1] == 3.0  # offset (a, b, d) <- channel a*4 + b*2 + d
    conv = PointwiseConv3d(4, 3)
    ref = torch.nn.Conv3d(4, 3, 1)
    ref.weight.data = conv.weight.data.view(3, 4, 1, 1, 1)
    ref.bias.data = conv.bias.data
    z = torch.randn(2, 4, 3, 5, 2)
    torch.testing.assert_close(conv(z), ref(z), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(conv(z.contiguous(memory_format=torch.channels_last_3d)), ref(z), atol=1e-6, rtol=1e-5)
