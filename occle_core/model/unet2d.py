"""2D UNet of the semantic branch: its own residual backbone, a UNet decoder and the 2D semantic head.

Used when ``model.shared_encoders`` is false (the published layout): the semantic branch then has an image
network of its own, supervised by the 2D pseudo labels through ``sem2d``, whose decoder output is what the branch
lifts into 3D; the geometric branch keeps a separate :class:`~occle_core.model.image_encoder.ImageEncoder`.

The decoder climbs the backbone's stages from the coarsest: upsample (bilinear) to the next finer stage,
concatenate that stage's features (skip connection), two 3x3 conv-bn-relu. It stops at the finest stage (stride
4): that is the resolution the lifting samples, and the head's logits are upsampled to the image as the shared
encoder's are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.model.image_encoder import Backbone, SemanticHead2D, conv_bn_relu, load_backbone_weights


class UNet2D(nn.Module):
    """Backbone (encoder) + UNet decoder with concatenated skips to stride 4 + 2D semantic head.

    Args:
        channels: backbone stage widths (``cfg.model.image_channels``); decoder step ``i`` has ``channels[i]``.
        feat_dim: channels of the decoder output (the lifted features).
        num_classes: K of the 2D semantic head.
        pretrained: optional local file holding a state dict of the backbone (``""``: random init).
    """

    stride = 4  # of the decoder output relative to the input image

    def __init__(self, channels: list[int], feat_dim: int, num_classes: int, pretrained: str = "") -> None:
        super().__init__()
        self.backbone = Backbone(channels)
        # decoder step i: stage i + 1 (upsampled) concatenated with stage i -> channels[i]
        self.decoder = nn.ModuleList(
            nn.Sequential(conv_bn_relu(cin + c, c), conv_bn_relu(c, c)) for c, cin in zip(channels[:-1], channels[1:])
        )
        self.out = conv_bn_relu(channels[0], feat_dim, 1)
        self.head = SemanticHead2D(feat_dim, num_classes)
        if pretrained:
            load_backbone_weights(self.backbone, pretrained)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) normalised image -> (features (B, F, H/4, W/4), logits (B, K, H, W))."""
        feats = self.backbone(image)  # stage i: (B, channels[i], ~H / 4 / 2**i, ...)
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            skip = feats[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[i](torch.cat([x, skip], 1))
        feat = self.out(x)
        return feat, self.head.logits(feat, image.shape[-2:])
