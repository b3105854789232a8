"""OccLE: N camera images + LiDAR scan -> 3D semantic occupancy logits (B, K, X, Y, Z).

Data flow (``F`` = ``cfg.model.feat_dim``, ``s`` = ``cfg.model.feature_stride``, grid (X, Y, Z), N cameras per
frame stacked frame-major as in :class:`~occle_core.data.batch.Batch`; N = 1 is the single-camera network):

- LiDAR encoder: points -> sparse 3D convs -> dense grid (B, F, X/s, Y/s, Z/s).
- Image encoder (one, shared by the cameras): images (B*N, 3, H, W) -> FPN features (B*N, F, H/4, W/4) and 2D
  logits ``sem2d`` (B*N, K, H, W); the features are lifted along camera rays into the feature grid
  (B, F, X/s, Y/s, Z/s), a masked mean over the cameras that see each voxel (:func:`lift_cameras`).
- ``model.shared_encoders`` true: both branches read these two encoders. False (the published layout): they are
  the geometric branch's; the semantic branch runs its own 2D UNet (features lifted the same way, and ``sem2d``)
  and its own sparse 3D UNet on the voxelised scan.
- Semantic branch: LiDAR + lifted image features -> semantic grid -> ``sem3d`` (B, K, X, Y, Z).
- Geometric branch: tri-plane cross-plane attention -> geometry grid -> occupancy logit ``geo`` (B, 1, X, Y, Z).
- Fusion: both grids average-pooled to the token grid (grid / ``token_stride``), mixed by the Dual Mamba
  (or a conv fusion), upsampled, merged with both grids and decoded to ``logits`` (B, K, X, Y, Z).
- Projection: the class probabilities of the feature voxels (softmax of the logits averaged over each feature
  voxel's ``s^3`` output voxels) scatter-accumulated onto each camera's image plane at ``H / proj_stride``
  with the occupancy ``1 - p(empty)`` as visibility (``proj``, ``proj_weight``, one map per camera).

The ``logits`` and ``geo`` heads predict the output grid from the feature grid by a 1x1 convolution to
``out * s**3`` channels followed by a depth-to-space rearrangement (a transposed convolution with kernel =
stride = ``s``): every output voxel gets its own prediction at the cost of one small matrix product, and the
LiDAR encoder's space-to-depth occupancy input carries the output-resolution detail. With ``model.hit_skip`` the
logits head also reads that detail directly: the ``s**3`` bits saying which of a feature voxel's output voxels
hold a return (:func:`~occle_core.model.lidar_encoder.hit_bits`; of the current scan for a multi-frame model) are
appended to the fused features, so a voxel's own LiDAR evidence reaches its logits through one weight instead of
through the 3D convolutions, the fusion and a linear map shared by its ``s**3`` siblings. The auxiliary ``sem3d``
head (``model.sem3d_head``) is either such a head too (``full``) or predicts at the feature resolution and is
upsampled (nearest, ``coarse``; the shipped tiny checkpoint's).

Inference that only needs class ids (the node, ``occle-predict``) calls :meth:`OccLE.predict_labels`: the
trunk, then the logits head fused with the class decision block by block, so the (B, K, X, Y, Z) float logits
are never built (and the ``geo`` head, a training output, is skipped). With ``model.ground_gate`` the class
decision gives no ground class to a voxel the frame's scan says is not ground (:mod:`occle_core.model.ground_gate`:
more than that many metres above the ground plane fitted to the scan, or the lower flank of an object standing on
it): a flat car roof or a car's side is not road. It is a rule of the decision, not of the network: the logits,
training and the losses do not see it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.config import OccleConfig
from occle_core.data.batch import Batch
from occle_core.geometry import Calib
from occle_core.ground import GROUND_CLASSES, class_ids
from occle_core.model.geometric_branch import GeometricBranch
from occle_core.model.ground_gate import gate_mask
from occle_core.model.image_encoder import ImageEncoder
from occle_core.model.layers import PointwiseConv3d, UpsampleHead, cat_cl, conv3d_bn_relu
from occle_core.model.lidar_encoder import LidarEncoder, hit_bits
from occle_core.model.projection import LayoutCache, composite, gather_voxels, occupied_class_probs
from occle_core.model.semantic_branch import SemanticBranch, lift_cameras
from occle_core.model.sparse_unet3d import SparseUNet3D
from occle_core.model.unet2d import UNet2D

LAYOUT_CACHE_SIZE = 16  # ray layouts kept: 6 cameras of a rig at two image sizes (training, evaluation) fit
PARAMETER_GROUPS = ("image_encoder", "lidar_encoder", "semantic_branch", "geometric_branch", "fusion", "heads")
SEM3D_HEADS = ("coarse", "full")
# the semantic branch's own encoders (model.shared_encoders: false): modules of the network, called by it, whose
# parameters and FLOPs count in the semantic_branch group
SEMANTIC_ENCODERS = ("semantic_image_unet", "semantic_lidar_unet")
# learning-rate factor of the hit skip's weights (model.hit_skip): they start at zero and under Adam move about one
# learning rate per step, so at the base rate a fine-tune of a few hundred steps could not give a hit more than a
# fraction of a logit (a weight of the fused features is ~0.3)
HIT_SKIP_LR_SCALE = 10.0


@dataclass
class OccleOutput:
    """Network outputs (shapes as in docs/architecture.md).

    Attributes:
        logits: (B, K, X, Y, Z) final semantic occupancy logits (K includes the empty class).
        sem2d: (B*N, K, H, W) image-head logits of every camera (row ``b * N + n``); None without the image.
        sem3d: (B, K, X, Y, Z) semantic-branch logits; None without the semantic branch or in inference mode.
        geo: (B, 1, X, Y, Z) occupancy logit of the geometric branch.
        proj: (B*N, K, Hp, Wp) scatter-accumulated class probabilities per camera; None in inference mode.
        proj_weight: (B*N, 1, Hp, Wp) accumulated visibility weight (0 where no voxel projects); None likewise.
        proj_stride: Hp = H // proj_stride, Wp = W // proj_stride.
    """

    logits: Tensor
    sem2d: Tensor | None
    sem3d: Tensor | None
    geo: Tensor
    proj: Tensor | None
    proj_weight: Tensor | None
    proj_stride: int


def _fusion_classes():
    from occle_core.model.dual_mamba import ConvFusion, DualMamba

    return DualMamba, ConvFusion


class OccLE(nn.Module):
    """The whole network; grid and class count come from ``cfg.data``, widths and switches from ``cfg.model``.

    Switches: ``use_image`` False gives the LiDAR-only model (no image encoder, no ``sem2d``);
    ``use_semantic_branch`` False drops the semantic branch (the fusion reads the LiDAR grid instead, no
    ``sem3d``); ``use_dual_mamba`` False replaces the Dual Mamba by a conv fusion (ablation);
    ``shared_encoders`` False gives the semantic branch its own 2D UNet and sparse 3D UNet
    (``semantic_image_unet``, ``semantic_lidar_unet``; their parameters are in the ``semantic_branch`` group;
    ``image_encoder`` / ``lidar_encoder`` are then the geometric branch's, the image encoder without a 2D head);
    ``sem3d_head`` ``full`` predicts ``sem3d`` per output voxel; ``time_features`` True (multi-frame input,
    ``data.past_frames`` > 0) gives the LiDAR encoders two more voxel input channels, the current-scan share and the
    mean age of the voxel's points.
    """

    def __init__(self, cfg: OccleConfig) -> None:
        super().__init__()
        m = cfg.model
        self.grid = cfg.data.voxel_grid()
        self.classes = cfg.data.classes()
        K, Fd, s = self.classes.num_classes, m.feat_dim, m.feature_stride
        if s < 1 or any(n % s for n in self.grid.shape):
            raise ValueError(f"model.feature_stride {s} must divide the grid shape {self.grid.shape}")
        if m.token_stride % s or m.token_stride < s:
            raise ValueError(f"model.token_stride {m.token_stride} must be a multiple of feature_stride {s}")
        if m.proj_stride < 1:
            raise ValueError(f"model.proj_stride must be >= 1, got {m.proj_stride}")
        if m.sem3d_head not in SEM3D_HEADS:
            raise ValueError(f"model.sem3d_head must be one of {SEM3D_HEADS}, got {m.sem3d_head!r}")
        if not isinstance(m.shared_encoders, bool):
            raise ValueError(f"model.shared_encoders must be true or false, got {m.shared_encoders!r}")
        self.num_classes, self.feature_stride, self.proj_stride = K, s, m.proj_stride
        self.token_pool = m.token_stride // s
        self.feature_shape = tuple(n // s for n in self.grid.shape)
        self.empty_index = self.classes.empty_index

        tf = bool(m.time_features)  # multi-frame input: two more voxel channels (lidar_encoder.voxelize_points)
        self.time_features = tf
        own = m.use_semantic_branch and not m.shared_encoders  # the semantic branch has encoders of its own
        own_image = own and m.use_image
        self.semantic_image_unet = UNet2D(m.image_channels, Fd, K, m.pretrained_image) if own_image else None
        self.semantic_lidar_unet = (
            SparseUNet3D(self.grid, m.lidar_channels, Fd, s, m.lidar_backend, tf) if own else None
        )
        head2d = None if own_image else K  # the 2D head (sem2d) sits on the image network the semantic branch reads
        self.image_encoder = ImageEncoder(m.image_channels, Fd, head2d, m.pretrained_image) if m.use_image else None
        self.lidar_encoder = LidarEncoder(self.grid, m.lidar_channels, Fd, s, m.lidar_backend, tf)
        self.semantic_branch = SemanticBranch(Fd, K, m.use_image) if m.use_semantic_branch else None
        self.geometric_branch = GeometricBranch(Fd, m.use_image)
        DualMamba, ConvFusion = _fusion_classes()
        sizes = (Fd, Fd, Fd, m.mamba_dim, m.mamba_layers, m.mamba_state)
        mixer = DualMamba(*sizes, scan_backend=m.scan_backend) if m.use_dual_mamba else ConvFusion(*sizes)
        self.fusion = nn.ModuleDict(
            {
                "mixer": mixer,
                "merge": conv3d_bn_relu(3 * Fd, Fd, 1),
            }
        )
        if not isinstance(m.hit_skip, bool):
            raise ValueError(f"model.hit_skip must be true or false, got {m.hit_skip!r}")
        self.hit_skip = m.hit_skip
        skip = s**3 if m.hit_skip else 0  # the scan's hit bits of each feature voxel's children
        heads: dict[str, nn.Module] = {"logits": UpsampleHead(Fd, K, s, skip), "geo": UpsampleHead(Fd, 1, s)}
        if self.semantic_branch is not None:
            # full: one prediction per output voxel; coarse: at the feature resolution, upsampled (nearest)
            heads["sem3d"] = UpsampleHead(Fd, K, s) if m.sem3d_head == "full" else PointwiseConv3d(Fd, K)
        self.heads = nn.ModuleDict(heads)

        ground = GROUND_CLASSES.get(self.classes.name, ())
        self.register_buffer("ground_class_ids", torch.as_tensor(class_ids(self.classes, ground)), persistent=False)
        self.set_ground_gate(m.ground_gate)

        # (Xs*Ys*Zs, 3) centres of the feature voxels: lifting and projection targets, built once, not saved
        coarse = self.grid.scaled(s)
        self.register_buffer("feature_centers", torch.from_numpy(coarse.centers().reshape(-1, 3)), persistent=False)
        self._layouts = LayoutCache(LAYOUT_CACHE_SIZE)  # one entry per camera calibration

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per branch: image_encoder, lidar_encoder, semantic_branch (with its own encoders, if any),
        geometric_branch, fusion, heads (absent branches are left out)."""
        groups = {}
        for name in PARAMETER_GROUPS:
            module = getattr(self, name)
            if module is not None:
                groups[name] = list(module.parameters())
        for name in SEMANTIC_ENCODERS:
            module = getattr(self, name)
            if module is not None:
                groups["semantic_branch"] += list(module.parameters())
        return groups

    def optimizer_groups(self, lr: float) -> list[dict]:
        """Parameter groups for the optimiser: everything at ``lr`` (group 0), the hit skip's weights, if any, at
        ``lr * HIT_SKIP_LR_SCALE`` (a ``LambdaLR`` schedule scales both alike)."""
        skip = self.heads["logits"].extra_weight
        rest = [p for p in self.parameters() if p is not skip]
        groups = [{"params": rest, "lr": lr}]
        if skip is not None:
            groups.append({"params": [skip], "lr": lr * HIT_SKIP_LR_SCALE})
        return groups

    def _tokens(self, x: Tensor) -> Tensor:
        if self.token_pool == 1:
            return x
        return F.avg_pool3d(x, self.token_pool, self.token_pool, ceil_mode=True)

    def project(
        self, fused: Tensor, lidar_to_image: Tensor, image_hw: tuple[int, int], num_cameras: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Scatter-accumulated projection of the class probabilities at the feature resolution, per camera.

        The logits of each feature voxel are the mean of its ``s^3`` output voxels' logits (the logits head
        averaged over its children, no output-resolution grid is built); their class distribution given occupied is
        composited along each camera's rays with the occupancy ``1 - p(empty)`` as visibility
        (:func:`occupied_class_probs`), at the image size / ``proj_stride``.
        One camera at a time; each camera's ray layout is cached under its own calibration.

        Args:
            fused: (B, F, Xs, Ys, Zs) fused features (the input of the logits head).
            lidar_to_image: (B*N, 3, 4) grid -> pixels of each camera (row ``b * N + n``).
            num_cameras: N.

        Returns:
            maps (B*N, K, H // proj_stride, W // proj_stride) and weight (B*N, 1, ...), rows as the cameras.
        """
        ps = self.proj_stride
        B = fused.shape[0]
        hw = (image_hw[0] // ps, image_hw[1] // ps)
        scale = torch.tensor([1.0 / ps, 1.0 / ps, 1.0], device=lidar_to_image.device).view(1, 3, 1)
        l2i = (lidar_to_image.float() * scale).view(B, num_cameras, 3, 4)  # pixels of the strided images
        coarse = self.heads["logits"].coarse(fused)  # (B, K, Xs, Ys, Zs), channels-last memory
        maps, weights = [], []
        for n in range(num_cameras):
            layout = self._layouts.get(self.feature_centers, l2i[:, n], hw)
            logits = gather_voxels(coarse, layout).float()  # (M, K) voxels projected into camera n
            probs, occ = occupied_class_probs(logits, self.empty_index)  # (M, K) given occupied, (M,)
            m, w = composite(probs, occ, layout, B, hw)  # (B, K, Hp, Wp), (B, 1, Hp, Wp)
            maps.append(m)
            weights.append(w)
        if num_cameras == 1:
            return maps[0], weights[0]
        return torch.stack(maps, 1).flatten(0, 1), torch.stack(weights, 1).flatten(0, 1)

    def _lift(self, feat2d: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """(B*N, F, H/4, W/4) features of every camera -> (B, F, Xs, Ys, Zs) masked mean over the cameras and the
        validity (B, 1, Xs, Ys, Zs) (:func:`lift_cameras`)."""
        hw = tuple(batch.image.shape[-2:])
        return lift_cameras(
            feat2d, self.feature_centers, batch.lidar_to_image, batch.num_cameras, hw, self.feature_shape
        )

    def _sem3d(self, sem_feat: Tensor) -> Tensor:
        """(B, F, Xs, Ys, Zs) semantic grid -> (B, K, X, Y, Z) ``sem3d`` logits (see ``model.sem3d_head``)."""
        head = self.heads["sem3d"]
        if isinstance(head, UpsampleHead):
            return head(sem_feat)  # one prediction per output voxel
        sem3d = head(sem_feat).contiguous()  # (B, K, Xs, Ys, Zs)
        s = self.feature_stride
        return F.interpolate(sem3d, scale_factor=s, mode="nearest") if s > 1 else sem3d

    def _trunk(self, batch: Batch, inference: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Encoders, branches and fusion: ``(fused, geo_feat, sem2d, sem3d)``, the grids at the feature resolution
        (B, F, Xs, Ys, Zs) (``fused`` (B, F + s^3, ...) with ``model.hit_skip``: the hit bits appended);
        ``sem3d`` only when not ``inference``."""
        B = batch.batch_size
        lidar, _ = self.lidar_encoder(batch.points, B)  # (B, F, Xs, Ys, Zs)
        sem2d = img_vox = valid = None
        if self.image_encoder is not None:
            feat2d, sem2d = self.image_encoder(batch.image)  # (B*N, F, H/4, W/4), (B*N, K, H, W) or None
            img_vox, valid = self._lift(feat2d, batch)  # (B, F, Xs, Ys, Zs), (B, 1, Xs, Ys, Zs)
        sem3d = None
        if self.semantic_branch is not None:
            sem_lidar, sem_img = lidar, img_vox  # shared encoders
            if self.semantic_lidar_unet is not None:  # the branch's own sparse 3D UNet
                sem_lidar, _ = self.semantic_lidar_unet(batch.points, B)
            if self.semantic_image_unet is not None:  # the branch's own 2D UNet, the source of sem2d
                feat2d, sem2d = self.semantic_image_unet(batch.image)
                sem_img, _ = self._lift(feat2d, batch)  # validity depends on the cameras only: same as above
            sem_feat = self.semantic_branch(sem_lidar, sem_img, valid)  # (B, F, Xs, Ys, Zs)
            if not inference:
                sem3d = self._sem3d(sem_feat)  # (B, K, X, Y, Z)
        else:
            sem_feat = lidar
        geo_feat = self.geometric_branch(lidar, img_vox, valid)  # (B, F, Xs, Ys, Zs)
        mixed = self.fusion["mixer"](self._tokens(sem_feat), self._tokens(geo_feat))  # (B, F, x, y, z) tokens
        if mixed.shape[2:] != sem_feat.shape[2:]:
            mixed = F.interpolate(mixed, size=sem_feat.shape[2:], mode="trilinear", align_corners=False)
        fused = self.fusion["merge"](cat_cl([sem_feat, geo_feat, mixed]))  # (B, F, Xs, Ys, Zs)
        if self.hit_skip:  # (B, F + s^3, Xs, Ys, Zs): each output voxel's own LiDAR evidence reaches its logits
            fused = cat_cl([fused, hit_bits(batch.points, self.grid, self.feature_stride, B, self.time_features)])
        return fused, geo_feat, sem2d, sem3d

    def forward(self, batch: Batch, inference: bool = False) -> OccleOutput:
        """Run the network on a batch.

        Args:
            batch: inputs (``image``, ``points``, ``lidar_to_image``, ``num_cameras``); targets are not read.
            inference: True skips the training-only outputs (``sem3d`` and the projection).
        """
        fused, geo_feat, sem2d, sem3d = self._trunk(batch, inference)
        geo = self.heads["geo"](geo_feat)  # (B, 1, X, Y, Z)
        logits = self.heads["logits"](fused)  # (B, K, X, Y, Z)
        proj = proj_weight = None
        if not inference:
            hw = tuple(batch.image.shape[-2:])
            proj, proj_weight = self.project(fused, batch.lidar_to_image, hw, batch.num_cameras)
        return OccleOutput(logits, sem2d, sem3d, geo, proj, proj_weight, self.proj_stride)

    def features(self, batch: Batch) -> Tensor:
        """(B, F, Xs, Ys, Zs) fused features, the input of the logits head (inference: no training outputs);
        (B, F + s^3, ...) with ``model.hit_skip``."""
        return self._trunk(batch, inference=True)[0]

    def classify(self, fused: Tensor, forbid: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(B, F, Xs, Ys, Zs) fused features -> (B, X, Y, Z) uint8 class ids, ``forward(...).logits.argmax(1)``
        without building the float logits grid (see :meth:`UpsampleHead.labels`, which also says what ``forbid``
        does)."""
        return self.heads["logits"].labels(fused, self.empty_index, forbid)

    def set_ground_gate(self, metres: float) -> None:
        """Set the ground gate of :meth:`predict_labels` (``model.ground_gate``; 0 = off).

        Raises:
            ValueError: not a finite number >= 0, or > 0 for a class table without ground classes.
        """
        if isinstance(metres, bool) or not isinstance(metres, int | float) or not math.isfinite(metres) or metres < 0:
            raise ValueError(f"model.ground_gate must be a number of metres >= 0 (0 = off), got {metres!r}")
        if metres > 0 and not len(self.ground_class_ids):
            raise ValueError(f"model.ground_gate needs ground classes; the {self.classes.name} class table has none")
        self.ground_gate = float(metres)

    def ground_forbid(self, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """The ground gate of a batch as :meth:`UpsampleHead.labels` takes it: (B, X, Y, Z) bool voxels the scan
        says are not ground (:func:`~occle_core.model.ground_gate.gate_mask` at ``model.ground_gate`` metres:
        above the ground, or the flank of an object) and the ground class ids; None when the gate is off."""
        if self.ground_gate <= 0:
            return None
        return gate_mask(batch.points, self.grid, batch.batch_size, self.ground_gate), self.ground_class_ids

    def predict_labels(self, batch: Batch) -> Tensor:
        """(B, X, Y, Z) uint8 class ids of a batch: :meth:`features` then :meth:`classify`, with the ground gate
        (``model.ground_gate``, :meth:`ground_forbid`) when it is on; off, ``forward(batch).logits.argmax(1)``."""
        return self.classify(self.features(batch), self.ground_forbid(batch))


def model_summary(cfg: OccleConfig, batch: Batch | None = None, num_points: int = 20_000) -> dict:
    """Parameter count and FLOPs of one forward pass (``torch.utils.flop_counter.FlopCounterMode``).

    Args:
        cfg: configuration of the model to build.
        batch: the input to count on; None builds a synthetic one (``num_points`` random points in the grid,
            a random image at ``cfg.data.image_size``, a forward-looking camera).

    Returns:
        ``{"params": int, "params_by_group": {group: int}, "flops": int, "flops_by_module": {group: int}}``
        (FLOPs of matrix products and convolutions, a multiply-add counting 2, per parameter group; sparse
        LiDAR convolutions are counted as the dense backend runs them; elementwise work such as the selective
        scan recurrence is not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = OccLE(cfg).eval()
    if batch is None:
        batch = synthetic_batch(cfg, num_points)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(batch)
    counts = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    by_module: dict[str, int] = {}
    for name, flops in counts.items():
        parts = name.split(".")
        # top-most counted modules below the model (children of ModuleDicts such as fusion / heads included)
        ancestors = (".".join(parts[:i]) for i in range(2, len(parts)))
        if len(parts) >= 2 and parts[0] == "OccLE" and not any(a in counts for a in ancestors):
            group = "semantic_branch" if parts[1] in SEMANTIC_ENCODERS else parts[1]
            by_module[group] = by_module.get(group, 0) + flops
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "params_by_group": {k: sum(p.numel() for p in v) for k, v in model.parameter_groups().items()},
        "flops": int(counter.get_total_flops()),
        "flops_by_module": by_module,
    }


def synthetic_batch(
    cfg: OccleConfig, num_points: int = 20_000, batch_size: int = 1, seed: int = 0, num_cameras: int = 1
) -> Batch:
    """A random batch shaped like ``cfg`` (points uniform in the grid, a KITTI-like forward camera, or a ring of
    ``num_cameras`` of them, see :func:`ring_calibs`).

    Meant for shape checks, FLOP counts and timings, not for training.
    """
    g = torch.Generator().manual_seed(seed)
    grid = cfg.data.voxel_grid()
    H, W = cfg.data.image_size
    lo = torch.tensor(grid.origin)
    hi = torch.from_numpy(grid.upper).float()
    xyz = lo + torch.rand(batch_size * num_points, 3, generator=g) * (hi - lo)
    b = torch.arange(batch_size).repeat_interleave(num_points).float()[:, None]
    dt = torch.zeros(batch_size * num_points, 1)  # one scan: every point is the current scan's
    points = torch.cat([b, xyz, torch.rand(batch_size * num_points, 1, generator=g), dt], 1)  # (M, 6)
    rig = np.stack([c.lidar_to_image for c in ring_calibs(num_cameras, H, W)])  # (N, 3, 4)
    l2i = torch.from_numpy(rig).float().repeat(batch_size, 1, 1)  # (B*N, 3, 4), frame-major
    image = torch.randn(batch_size * num_cameras, 3, H, W, generator=g)
    frame_ids = [f"synthetic/{i}" for i in range(batch_size)]
    return Batch(image=image, points=points, lidar_to_image=l2i, frame_ids=frame_ids, num_cameras=num_cameras)


def synthetic_targets(batch: Batch, num_classes: int, grid_shape: tuple[int, int, int], seed: int = 0) -> Batch:
    """``batch`` with random training targets that switch every loss term on: voxel labels (B, X, Y, Z) with a 10 %
    label mask, 2D pseudo labels (B*N, H, W), 3D pseudo labels, and LiDAR occupied / free masks consistent with the
    labels. For timings and gradient checks, not for training."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch.batch_size, *grid_shape)
    labels = torch.randint(0, num_classes, shape, generator=g)
    return dataclasses.replace(
        batch,
        voxel_labels=labels,
        label_mask=torch.rand(shape, generator=g) < 0.1,
        pseudo2d=torch.randint(0, num_classes, (batch.image.shape[0], *batch.image.shape[-2:]), generator=g),
        pseudo3d=torch.randint(0, num_classes, shape, generator=g),
        occupied=labels > 0,
        free=labels == 0,
    )


_CAM_FROM_LIDAR = np.array([[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]])  # LiDAR (x fwd, y left, z up) -> camera


def _intrinsics(height: int, width: int) -> np.ndarray:
    """(3, 3) pinhole matrix with a 90 degree horizontal field of view, principal point at the image centre."""
    f = width / 2.0
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])


def forward_camera(height: int, width: int) -> np.ndarray:
    """(3, 4) LiDAR -> pixel matrix of a KITTI-like camera (x forward, 90 degree horizontal field of view)."""
    return _intrinsics(height, width) @ np.concatenate([_CAM_FROM_LIDAR, np.zeros((3, 1))], 1)


def ring_calibs(count: int, height: int, width: int) -> list[Calib]:
    """``count`` KITTI-like cameras (90 degree horizontal field of view, image (height, width)) at the grid-frame
    origin, camera ``k`` looking along yaw ``360 * k / count`` degrees (counter-clockwise from x): the front
    camera first; camera 0 is :func:`forward_camera`. Six of them cover the full circle like a nuScenes rig."""
    P = np.concatenate([_intrinsics(height, width), np.zeros((3, 1))], 1)  # K | 0
    out = []
    for k in range(count):
        yaw = 2.0 * np.pi * k / count
        c, s = np.cos(yaw), np.sin(yaw)
        T = np.eye(4)
        T[:3, :3] = _CAM_FROM_LIDAR @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # R_cam<-grid
        out.append(Calib(P, T, (height, width)))
    return out
