"""occle_ros: the thin ROS 2 layer around occle_core (node, parameters, extrinsics, sync, msgs, bag playback)."""
