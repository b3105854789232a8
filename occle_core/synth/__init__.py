"""Procedural driving world (``occle-synth``): every later stage (training, evaluation, the ROS node, the demo)
can run on sequences made here when real datasets are out of reach.

Modules, each one idea (import from them directly; this package imports nothing):

- :mod:`.classes`: raw SemanticKITTI classes of the world and their materials (colour, reflectivity, level).
- :mod:`.noise`: seeded random streams per purpose and procedural noise fields.
- :mod:`.primitives`: objects as arrays of boxes, cylinders and ellipsoids.
- :mod:`.roads`: streets, parking bays and the two-level ground raster.
- :mod:`.objects`: vehicles, persons, bicycles, poles, signs, trees, buildings and where they may stand.
- :mod:`.scene`: one seed's world: layout, style, ego trajectory, object population.
- :mod:`.sensors`: the LiDAR rigs (32 / 64 / 128 beams, height, pitch, intensity) and the camera (KITTI
  geometry), and their ray grids.
- :mod:`.raycast`: vectorised first hits of ray grids against the world.
- :mod:`.render`: flat camera images (class colours, texture noise, Lambert shading).
- :mod:`.appearance`: realistic camera images (materials, sun shadows, sky light, reflections).
- :mod:`.isp`: the camera response of realistic images (exposure, white balance, blur, noise, JPEG).
- :mod:`.pseudo_noise`: 2D pseudo labels by a noise model of a foundation segmenter.
- :mod:`.sequence`: per-frame scans, images, pseudo labels and accumulated voxel ground truth.
- :mod:`.writer`: the SemanticKITTI layout on disk; :mod:`.cli`: the ``occle-synth`` command.
- :mod:`.released`: the nuScenes v1.0 layout with Occ3D-nuScenes beside it (given or generated content);
  :mod:`.kitti_layouts`: KITTI raw and object replicas.
- :mod:`.surround`: the world seen by a nuScenes rig (six cameras, LIDAR_TOP) with ego-frame Occ3D ground truth;
  :mod:`.visibility`: the camera visibility mask (Occ3D's ``mask_camera``).
"""
