"""The one device resolver of occle: ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> ``torch.device``.

Training, evaluation, the predictor (and through it the ROS node), the pseudo labellers and the benchmarks all
resolve their ``device`` argument here, so every entry point accepts the same names and fails the same way.
"""

from __future__ import annotations

import torch

DEVICE_NAMES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU) | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> ``torch.device``.

    Raises:
        ValueError: an unknown name, CUDA requested on a host without it, or a CUDA index that does not exist.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"device {device!r} is not valid: expected 'cuda:N' with an integer N")
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    raise ValueError(f"device must be {DEVICE_NAMES}, got {device!r}")
