"""Shared pytest setup.

DDS traffic of every test stays on this host (loopback discovery only), and each test session uses its own
random ROS domain so that parallel sessions on one machine do not hear each other. Both are set at import
time, before any test module initialises rclpy, and are inherited by subprocesses the tests start.

Fixtures of the ROS tests (rclpy is imported only when one is used): ``ros_context`` (a fresh rclpy context per
test), ``ros_module_context`` (one per module), ``checkpoint`` (the tiny random-initialised checkpoint of
``helpers_ros.build_checkpoint``, one per module) and ``predictor`` (a CPU Predictor of it, one per module).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")  # older distros (Humble) read this instead
if "OCCLE_TEST_DOMAIN_ID" not in os.environ:
    os.environ["OCCLE_TEST_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ["ROS_DOMAIN_ID"] = os.environ["OCCLE_TEST_DOMAIN_ID"]
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _rclpy_context() -> Iterator[object]:
    """An initialised ``rclpy.Context``, shut down when the generator is closed."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh rclpy context for one test."""
    yield from _rclpy_context()


@pytest.fixture(scope="module")
def ros_module_context() -> Iterator[object]:
    """One rclpy context shared by the tests of a module."""
    yield from _rclpy_context()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised tiny OccLE checkpoint (64 x 64 x 8 grid, image 48 x 160), built once per module."""
    from helpers_ros import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path):
    """A CPU ``Predictor`` of the ``checkpoint`` fixture, loaded once per module."""
    from occle_core.predictor import Predictor

    return Predictor(checkpoint, device="cpu")
