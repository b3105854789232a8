"""Shared pytest setup.

DDS traffic of every test stays on this host (loopback discovery only), and each test session uses its own
random ROS domain so that parallel sessions on one machine do not hear each other. Both are set at import
time, before any test module initialises rclpy, and are inherited by subprocesses the tests start.
"""

from __future__ import annotations

import os
import random

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")  # older distros (Humble) read this instead
if "OCCLE_TEST_DOMAIN_ID" not in os.environ:
    os.environ["OCCLE_TEST_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ["ROS_DOMAIN_ID"] = os.environ["OCCLE_TEST_DOMAIN_ID"]
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "1")
