"""occle: ament_python package (colcon build in a ROS 2 workspace) and a plain pip package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "occle_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="OccLE: label-efficient 3D semantic occupancy from camera + LiDAR, with a ROS 2 node",
    packages=find_packages(
        include=["occle_core", "occle_core.*", "occle_ros", "occle_ros.*", "occle_bench", "occle_experiments"]
    ),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
        (f"share/{PACKAGE}/models", glob("models/*.pt")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "pillow>=9",
        "transforms3d>=0.4",
        "rosbags>=0.10",
        "psutil>=5.9",
    ],
    extras_require={
        # In a ROS 2 workspace these come from the distro (package.xml); in a plain venv from PyPI wheels.
        "ros": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-sensor-msgs",
            "ros-visualization-msgs",
            "ros-std-msgs",
            "ros-geometry-msgs",
            "ros-nav-msgs",
            "ros-diagnostic-msgs",
            # libjpeg-turbo SIMD decoding of CompressedImage JPEGs (occle_ros/msgs/compressed.py; Pillow otherwise)
            "simplejpeg==1.9.0",
        ],
        "dev": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "ruff>=0.5", "spconv==2.3.8", "transformers>=4.40"],
        # the TFLite runtime of the 2D segmenter (occle-pseudo --segmenter deeplab-cityscapes)
        "segmenter": ["ai-edge-litert>=2.0"],
        # Tests only: the official nuScenes devkit, for test_nuscenes' cross-check. It pins numpy<2 (and pulls
        # opencv, matplotlib, scikit-learn, shapely), so install it in a venv of its own and point
        # OCCLE_NUSCENES_DEVKIT_PYTHON at that venv's python; the reader itself never imports it.
        "devkit": ["nuscenes-devkit==1.2.0"],
        # GPU hosts: CUDA kernels for the selective scan and sparse convolution.
        "cuda": ["mamba-ssm>=2", "spconv-cu120>=2.3"],
    },
    entry_points={
        "console_scripts": [
            "occle-synth = occle_core.cli:synth_main",
            "occle-train = occle_core.cli:train_main",
            "occle-eval = occle_core.cli:eval_main",
            "occle-adapt = occle_core.cli:adapt_main",
            "occle-predict = occle_core.cli:predict_main",
            "occle-pseudo = occle_core.cli:pseudo_main",
            "occle-inspect = occle_core.cli:inspect_main",
            "occle-bench = occle_bench.run:main",
            "occle-adapt-bag = occle_ros.adapt_bag:main",
            "occle-demo = occle_ros.demo:main",
            "occle-launch = occle_ros.launcher:main",
            "occle-play = occle_ros.bag_player:main",
            "occle-kitti2bag = occle_ros.kitti2bag:main",
            "occle-nuscenes2bag = occle_ros.nuscenes2bag:main",
            "occle_node = occle_ros.node:main",
        ],
    },
    zip_safe=True,
    maintainer="occle developers",
    license="Apache-2.0",
)
