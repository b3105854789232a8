"""The DDS environment of occle's ROS processes: the shipped Fast DDS profile for large messages.

With Fast DDS's default transports a full-size camera image (376 x 1241 rgb8, 1.4 MB) published best-effort from
another process on the same host is mostly lost (its fragments do not fit the default 512 KiB shared-memory
segment), so ``occle_node`` never completes a camera + LiDAR set. ``config/fastdds_large_data.xml`` gives the
participants a 32 MiB shared-memory segment (+ UDPv4). The profile matters in the process that *publishes* the
large messages (camera driver, ``occle-play``, the benchmark's driver); occle applies it to every ROS process it
starts (``occle-launch``, ``occle-demo``, ``occle-play``, ``launch/occle.launch.py``, ``occle-bench``).

The profile is named by ``FASTDDS_DEFAULT_PROFILES_FILE`` (Fast DDS 3: Kilted, Rolling, the PyPI wheels) or
``FASTRTPS_DEFAULT_PROFILES_FILE`` (Fast DDS 2: Humble, Jazzy), chosen by ``ROS_DISTRO``. Fast DDS reads it once
per process, when the first participant is created: the variable must be in the environment before
``rclpy.init`` (or the first node) of that process. Nothing is changed when the user
configured Fast DDS already (a profiles file variable, ``FASTDDS_BUILTIN_TRANSPORTS``, or a default profiles file
in the working directory) or when the RMW is not Fast DDS (e.g. ``RMW_IMPLEMENTATION=rmw_cyclonedds_cpp``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

PROFILE_FILE = "fastdds_large_data.xml"
#: the profiles-file variable of Fast DDS 3 (ROS 2 Kilted, Rolling) and of Fast DDS 2 (Humble, Jazzy: it does not
#: read the first one; the rmw of Fast DDS 3 still reads the second one, with a deprecation warning)
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: ROS 2 distributions that ship Fast DDS 2 (``ROS_DISTRO``); others, and no ROS_DISTRO (PyPI wheels), use 3
FASTDDS2_DISTROS = ("foxy", "galactic", "humble", "iron", "jazzy")
#: any of these set (non-empty) means the user configured Fast DDS's transports: leave them alone
USER_SETTINGS = (*PROFILE_VARIABLES, "FASTDDS_BUILTIN_TRANSPORTS")
#: profile files Fast DDS 3 / 2 load from the working directory unless SKIP_DEFAULT_XML_FILE=1
CWD_PROFILES = ("DEFAULT_FASTDDS_PROFILES.xml", "DEFAULT_FASTRTPS_PROFILES.xml")


def is_fastdds(env: Mapping[str, str]) -> bool:
    """True when ``env`` selects a Fast DDS RMW: ``RMW_IMPLEMENTATION`` unset/empty (the default RMW) or
    ``rmw_fastrtps_cpp`` / ``rmw_fastrtps_dynamic_cpp``."""
    return env.get("RMW_IMPLEMENTATION", "") in ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")


def profile_variable(env: Mapping[str, str]) -> str:
    """The profiles-file variable the Fast DDS of ``env``'s ROS distribution reads (see :data:`FASTDDS2_DISTROS`)."""
    return PROFILE_VARIABLES[1] if env.get("ROS_DISTRO", "").lower() in FASTDDS2_DISTROS else PROFILE_VARIABLES[0]


def profile_path() -> Path:
    """Absolute path of the shipped ``config/fastdds_large_data.xml`` (FileNotFoundError when not installed)."""
    from occle_core.resources import config_path

    return config_path(PROFILE_FILE).resolve()


def large_data_env(env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> dict[str, str]:
    """The variables to add to ``env`` (default ``os.environ``) so that Fast DDS loads the shipped profile.

    Returns ``{FASTDDS_DEFAULT_PROFILES_FILE: path}`` (``FASTRTPS_DEFAULT_PROFILES_FILE`` on Fast DDS 2
    distributions, :func:`profile_variable`), or ``{}`` when the RMW is not Fast DDS, when the user set any of
    :data:`USER_SETTINGS`, when ``cwd`` (default: the current directory, where the processes start) holds a Fast
    DDS default profiles file, or (with a warning) when the shipped file is missing.
    """
    env = os.environ if env is None else env
    if not is_fastdds(env) or any(env.get(name) for name in USER_SETTINGS):
        return {}
    folder = Path.cwd() if cwd is None else Path(cwd)
    if env.get("SKIP_DEFAULT_XML_FILE") != "1" and any((folder / name).is_file() for name in CWD_PROFILES):
        return {}
    try:
        path = str(profile_path())
    except FileNotFoundError as exc:
        warnings.warn(f"Fast DDS large-data profile not applied: {exc}", RuntimeWarning, stacklevel=2)
        return {}
    return {profile_variable(env): path}


def dds_environment(env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) with :func:`large_data_env` added: the environment of a child
    ROS process."""
    out = dict(os.environ if env is None else env)
    out.update(large_data_env(out, cwd))
    return out


def apply_large_data_profile() -> str | None:
    """Add :func:`large_data_env` to ``os.environ`` (call before ``rclpy.init`` of this process; children
    inherit it). Returns the profiles file Fast DDS will load (the shipped one or the user's), None when the RMW
    is not Fast DDS or no profiles file is set."""
    os.environ.update(large_data_env())
    if not is_fastdds(os.environ):
        return None
    names = (profile_variable(os.environ), *PROFILE_VARIABLES)  # the one this distribution reads first
    return next((os.environ[name] for name in names if os.environ.get(name)), None)
