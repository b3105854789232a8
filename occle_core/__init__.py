"""occle_core: label-efficient 3D semantic occupancy prediction (OccLE), pure Python + torch.

Nothing in this package imports ROS; the ROS 2 layer lives in ``occle_ros``.
"""

__version__ = "0.1.0"
