"""Locate the files the package ships: ``config/`` tables and the embedded checkpoint.

In a source checkout (``pip install -e .`` or ``colcon build --symlink-install``) the files sit next to
the package; an installed package finds them under ``<prefix>/share/occle_ros`` where ``setup.py``
puts them (the ROS ament layout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_NAME = "occle_ros"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def share_dirs() -> list[Path]:
    """Candidate roots holding ``config/``, ``launch/``, ``rviz/`` and ``models/``, most specific first."""
    dirs = [_REPO_ROOT, Path(sys.prefix) / "share" / PACKAGE_NAME]
    # a colcon install space (its prefix is not sys.prefix): the ament prefixes, as the ament index reads them
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / PACKAGE_NAME)
    return dirs


def resource_path(*parts: str) -> Path:
    """Return the first existing ``<root>/<parts...>`` among :func:`share_dirs`.

    Raises:
        FileNotFoundError: naming every place that was searched.
    """
    tried = []
    for root in share_dirs():
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(f"resource {'/'.join(parts)!r} not found; looked in: {', '.join(tried)}")


def config_path(name: str) -> Path:
    """Path of a shipped config file, e.g. ``config_path("semantic_kitti.yaml")``."""
    return resource_path("config", name)
