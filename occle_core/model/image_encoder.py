"""Image encoder: a small residual 2D CNN backbone, a feature pyramid (FPN) and a 2D semantic head.

The backbone has one stage per entry of ``channels`` (strides 4, 8, 16, 32); the FPN merges them top-down
into one ``feat_dim`` map at stride 4, which the semantic branch lifts into 3D and the 2D head turns into
class logits at the input resolution (supervised by the 2D pseudo labels). Backbone weights can be loaded
from a local file (``cfg.model.pretrained_image``); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a (projected when needed) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Backbone(nn.Module):
    """Residual backbone: stem (stride 2) then one stage per ``channels`` entry, each halving the resolution.

    Stage ``i`` outputs ``channels[i]`` channels at stride ``4 * 2**i``. With four stages each stage holds two
    blocks (the ResNet-18 layout); smaller backbones use one block per stage.
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        if not channels:
            raise ValueError("model.image_channels must list at least one stage width")
        blocks = 2 if len(channels) >= 4 else 1
        self.stem = conv_bn_relu(3, channels[0], 3, 2)
        stages, prev = [], channels[0]
        for ch in channels:
            stages.append(nn.Sequential(BasicBlock(prev, ch, 2), *[BasicBlock(ch, ch) for _ in range(blocks - 1)]))
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> per stage (B, channels[i], ~H / 4 / 2**i, ~W / 4 / 2**i)."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling + sum, a 3x3 output conv at the finest level."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Per-stage maps (finest first) -> (B, out_channels, H0, W0) at the finest stage's resolution."""
        x = self.lateral[-1](feats[-1])
        for feat, lateral in zip(reversed(feats[:-1]), reversed(self.lateral[:-1])):
            y = lateral(feat)
            x = y + F.interpolate(x, size=y.shape[-2:], mode="nearest")
        return self.out(x)


class SemanticHead2D(nn.Sequential):
    """2D semantic head: 3x3 conv-bn-relu, 1x1 to K; :meth:`logits` upsamples it (bilinear) to the image size."""

    def __init__(self, feat_dim: int, num_classes: int) -> None:
        super().__init__(conv_bn_relu(feat_dim, feat_dim, 3), nn.Conv2d(feat_dim, num_classes, 1))

    def logits(self, feat: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """(B, F, h, w) features -> (B, K, H, W) logits at ``image_hw``."""
        return F.interpolate(self(feat), size=image_hw, mode="bilinear", align_corners=False)


class ImageEncoder(nn.Module):
    """Backbone + FPN + 2D semantic head.

    Args:
        channels: backbone stage widths (``cfg.model.image_channels``).
        feat_dim: FPN / lifted feature channels.
        num_classes: K of the 2D semantic head; None: no head (the geometric branch's own encoder when the
            semantic branch has its own 2D UNet, ``model.shared_encoders: false``).
        pretrained: optional local file holding a state dict of :class:`Backbone` (``""``: random init).
    """

    stride = 4  # of the FPN output relative to the input image

    def __init__(self, channels: list[int], feat_dim: int, num_classes: int | None, pretrained: str = "") -> None:
        super().__init__()
        self.backbone = Backbone(channels)
        self.fpn = FPN(channels, feat_dim)
        self.head = SemanticHead2D(feat_dim, num_classes) if num_classes else None
        if pretrained:
            load_backbone_weights(self.backbone, pretrained)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, 3, H, W) normalised image -> (features (B, F, H/4, W/4), logits (B, K, H, W) or None without head)."""
        feat = self.fpn(self.backbone(image))
        return feat, None if self.head is None else self.head.logits(feat, image.shape[-2:])


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local backbone state dict (optionally under a ``state_dict`` / ``model`` key) with weights_only.

    Raises:
        FileNotFoundError: ``path`` does not exist (nothing is ever downloaded).
        ValueError: the file does not hold tensors matching the backbone, naming the first mismatches.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained_image weights not found: {path} (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of the image backbone, got {type(state).__name__}")
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        raise ValueError(
            f"{path} does not fit the image backbone of widths {backbone.channels}: "
            f"missing {missing[:5]}, shape mismatch {bad[:5]}"
        )
    backbone.load_state_dict({k: state[k] for k in own})
