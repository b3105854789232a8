"""The one device resolver: names accepted everywhere, one-line errors for bad names and absent CUDA."""

from __future__ import annotations

import pytest
import torch

from occle_core.device import resolve_device


def test_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device().type == resolve_device("auto").type


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="cuda:N"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_cuda_absent():
    with pytest.raises(ValueError, match=r"^device 'cuda' requested but CUDA is not available$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_present():
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
