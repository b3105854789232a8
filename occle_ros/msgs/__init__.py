"""ROS message <-> numpy, one module per message family (vectorised: no per-point or per-voxel Python loops).

- :mod:`.pointcloud`: ``PointCloud2`` decode (fast path: a read-only (N, 4) view) and encode
- :mod:`.image`: ``Image`` <-> numpy, (H, W, 3) uint8 RGB
- :mod:`.camera_info`: ``CameraInfo`` <-> (3, 4) projection
- :mod:`.voxels`: occupancy labels -> occupied voxels by class -> voxel ``PointCloud2``
- :mod:`.markers`: occupancy -> serialized ``MarkerArray`` (CDR written directly)
- :mod:`.cdr`: zero-copy reading of serialized ``Image`` / ``PointCloud2`` bytes (the node's raw subscriptions)

Every malformed input raises :class:`ConversionError` (a ``ValueError``) naming the field and what was expected.
The names below are re-exported so that callers can write ``from occle_ros import msgs`` and ``msgs.X``.
"""

from occle_ros.msgs.base import ConversionError, stamp_ns, to_time
from occle_ros.msgs.camera_info import camera_info_projection, projection_to_camera_info
from occle_ros.msgs.cdr import (
    RawImage,
    RawPointCloud2,
    UnsupportedEncapsulationError,
    deserialize_image,
    deserialize_pointcloud2,
)
from occle_ros.msgs.image import IMAGE_ENCODINGS, array_to_image, image_to_array, image_to_rgb, rgb_to_image
from occle_ros.msgs.markers import serialize_occupancy_markers
from occle_ros.msgs.pointcloud import (
    INTENSITY_FIELDS,
    POINTFIELD_TYPES,
    XYZI_DTYPE,
    array_to_pointcloud2,
    field_column,
    pointcloud2_to_array,
    pointcloud2_to_xyzi,
    pointfields_to_dtype,
    xyzi_to_pointcloud2,
)
from occle_ros.msgs.voxels import (
    VOXEL_CLOUD_DTYPE,
    OccupiedVoxels,
    occupancy_to_pointcloud2,
    occupied_voxels,
    pack_rgb,
    publish_mask,
)

__all__ = [
    "IMAGE_ENCODINGS",
    "INTENSITY_FIELDS",
    "POINTFIELD_TYPES",
    "VOXEL_CLOUD_DTYPE",
    "XYZI_DTYPE",
    "ConversionError",
    "OccupiedVoxels",
    "RawImage",
    "RawPointCloud2",
    "UnsupportedEncapsulationError",
    "array_to_image",
    "array_to_pointcloud2",
    "camera_info_projection",
    "deserialize_image",
    "deserialize_pointcloud2",
    "field_column",
    "image_to_array",
    "image_to_rgb",
    "occupancy_to_pointcloud2",
    "occupied_voxels",
    "pack_rgb",
    "pointcloud2_to_array",
    "pointcloud2_to_xyzi",
    "pointfields_to_dtype",
    "projection_to_camera_info",
    "publish_mask",
    "rgb_to_image",
    "serialize_occupancy_markers",
    "stamp_ns",
    "to_time",
    "xyzi_to_pointcloud2",
]
