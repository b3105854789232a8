"""Model widths the unit tests share: a network small enough for a CPU test in a second or two."""

SMALL_MODEL = {
    "image_channels": [8, 16],
    "feat_dim": 8,
    "lidar_channels": [4, 8],
    "mamba_dim": 8,
    "mamba_state": 4,
    "token_stride": 4,
}
