"""Reader and writer of the SemanticKITTI semantic scene completion (SSC) layout, byte exact.

Layout of one sequence ``<root>/sequences/SS/``::

    velodyne/NNNNNN.bin      float32 (N, 4): x, y, z, intensity (LiDAR frame: x forward, y left, z up)
    labels/NNNNNN.label      uint32 (N,): lower 16 bits semantic raw id, upper 16 bits instance id
    image_2/NNNNNN.png       RGB image of the left colour camera
    calib.txt                P0..P3 (3x4) and Tr (velodyne -> cam0), 12 values per line
    poses.txt                one line of 12 floats per frame: the 3x4 pose of cam0 in the first cam0 frame
    times.txt                one timestamp in seconds per frame
    voxels/NNNNNN.bin        occupancy of the input scan           } bit-packed 256 x 256 x 32 = 2097152 bits
    voxels/NNNNNN.invalid    voxels never observed by the scans    } -> 262144 bytes, np.packbits (big-endian
    voxels/NNNNNN.occluded   voxels occluded from the current pose } bit order), C order (X, Y, Z), x forward
    voxels/NNNNNN.label      uint16 (256 * 256 * 32,) -> 4194304 bytes: raw semantic id per voxel (0 = empty)
    pseudo_2d/NNNNNN.png     (occle) 2D pseudo labels, uint8 learning classes, 255 = none

In SemanticKITTI the voxel labels exist for every 5th frame only: the labelled frame list of a sequence is
the frames that have ``voxels/*.label``; the unlabelled (inference) list is every ``velodyne`` frame.

Every reader checks sizes and raises ``FileNotFoundError`` / ``ValueError`` naming the file and the expected
value. :class:`SemanticKittiDataset` returns :class:`occle_core.data.sample.Sample` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from occle_core.data.kitti_calib import read_kitti_calib
from occle_core.data.label_png import read_label_png
from occle_core.data.sample import CameraView, Sample
from occle_core.labels import IGNORE_INDEX, ClassTable, class_table

VOXEL_SHAPE: tuple[int, int, int] = (256, 256, 32)
VOXEL_COUNT: int = 256 * 256 * 32  # 2097152 voxels
PACKED_BYTES: int = VOXEL_COUNT // 8  # 262144 bytes of a bit-packed voxel file
LABEL_BYTES: int = VOXEL_COUNT * 2  # 4194304 bytes of a uint16 voxel label file
VOXEL_BIT_SUFFIXES: tuple[str, ...] = (".bin", ".invalid", ".occluded")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")


def _file_size(path: Path, expected: int | None = None, layout: str = "") -> int:
    """Size in bytes of the existing file ``path``; with ``expected``, a ValueError naming the file unless equal.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: ``expected`` is given and the size differs (the message names ``layout``, e.g. the voxel grid).
    """
    _require_file(path)
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise ValueError(f"{path}: size {size} bytes, expected {expected} ({layout})")
    return size


def _write_uint_array(path: str | Path, values: np.ndarray, ndim: int, what: str, shape: str, dtype: str) -> None:
    """Write ``values`` as a C-order ``dtype`` (little-endian unsigned) array after checking its rank and range.

    Raises:
        ValueError: ``values`` does not have ``ndim`` dimensions (named ``shape``) or a value does not fit ``dtype``.
    """
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must have shape {shape}, got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise ValueError(f"{what} must fit in {np.dtype(dtype).name}")
    np.ascontiguousarray(arr, dtype=dtype).tofile(Path(path))


def _frame_name(frame: int | str) -> str:
    return f"{int(frame):06d}"


# ----------------------------------------------------------------------------------------------------- points


def read_points(path: str | Path) -> np.ndarray:
    """Read ``velodyne/NNNNNN.bin``: (N, 4) float32 x, y, z, intensity.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: its size is not a multiple of 16 bytes (4 float32 per point).
    """
    path = Path(path)
    size = _file_size(path)
    if size % 16:
        raise ValueError(f"{path}: size {size} bytes is not a multiple of 16 (4 float32 per point)")
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)


def write_points(path: str | Path, points: np.ndarray) -> None:
    """Write (N, 4) x, y, z, intensity as little-endian float32 (``velodyne/NNNNNN.bin``)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError(f"points must have shape (N, 4), got {pts.shape}")
    np.ascontiguousarray(pts, dtype="<f4").tofile(Path(path))


def read_point_labels(path: str | Path, num_points: int | None = None) -> np.ndarray:
    """Read ``labels/NNNNNN.label``: (N,) uint32 (lower 16 bits semantic raw id, upper 16 instance).

    Args:
        num_points: expected number of labels (points of the matching scan), checked when given.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: its size is not a multiple of 4 bytes, or it does not hold ``num_points`` labels.
    """
    path = Path(path)
    size = _file_size(path)
    if size % 4:
        raise ValueError(f"{path}: size {size} bytes is not a multiple of 4 (one uint32 per point)")
    if num_points is not None and size != 4 * num_points:
        raise ValueError(f"{path}: holds {size // 4} labels, expected {num_points} (one per point of the scan)")
    return np.fromfile(path, dtype="<u4")


def write_point_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write (N,) uint32 point labels (``labels/NNNNNN.label``)."""
    _write_uint_array(path, labels, 1, "point labels", "(N,)", "<u4")


def split_point_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) uint32 -> (semantic raw id (N,) uint16, instance id (N,) uint16)."""
    lab = np.asarray(labels, np.uint32)
    return (lab & 0xFFFF).astype(np.uint16), (lab >> 16).astype(np.uint16)


def join_point_labels(semantic: np.ndarray, instance: np.ndarray | None = None) -> np.ndarray:
    """Semantic raw ids and instance ids -> (N,) uint32 ``semantic | instance << 16``."""
    sem = np.asarray(semantic).astype(np.uint32)
    if np.any(sem > 0xFFFF):
        raise ValueError("semantic raw ids must be < 65536")
    if instance is None:
        return sem
    inst = np.asarray(instance).astype(np.uint32)
    if np.any(inst > 0xFFFF):
        raise ValueError("instance ids must be < 65536")
    return sem | (inst << 16)


# ----------------------------------------------------------------------------------------------------- voxels


def read_voxel_bits(path: str | Path, shape: tuple[int, int, int] = VOXEL_SHAPE) -> np.ndarray:
    """Read a bit-packed voxel file (``.bin``, ``.invalid``, ``.occluded``) -> (X, Y, Z) bool.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: its size is not ``prod(shape) / 8`` bytes (262144 for 256 x 256 x 32).
    """
    path = Path(path)
    count = int(np.prod(shape))
    _file_size(path, (count + 7) // 8, f"bit-packed {shape} voxels")
    bits = np.unpackbits(np.fromfile(path, dtype=np.uint8), count=count)
    return bits.reshape(shape).astype(bool)


def write_voxel_bits(path: str | Path, mask: np.ndarray) -> None:
    """Write an (X, Y, Z) bool mask bit-packed in C order, big-endian bit order (np.packbits)."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"voxel mask must have shape (X, Y, Z), got {m.shape}")
    np.packbits(m.astype(bool).reshape(-1)).tofile(Path(path))


def read_voxel_labels(path: str | Path, shape: tuple[int, int, int] = VOXEL_SHAPE) -> np.ndarray:
    """Read ``voxels/NNNNNN.label`` -> (X, Y, Z) uint16 raw semantic ids.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: its size is not ``2 * prod(shape)`` bytes (4194304 for 256 x 256 x 32).
    """
    path = Path(path)
    _file_size(path, 2 * int(np.prod(shape)), f"uint16 labels of {shape} voxels")
    return np.fromfile(path, dtype="<u2").reshape(shape)


def write_voxel_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write (X, Y, Z) raw semantic ids as little-endian uint16 in C order."""
    _write_uint_array(path, labels, 3, "voxel labels", "(X, Y, Z)", "<u2")


# ------------------------------------------------------------------------------------------ poses and times


def read_poses(path: str | Path) -> np.ndarray:
    """Read ``poses.txt`` -> (F, 4, 4) float64 cam0 poses (12 values per line, row-major 3x4).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line does not hold 12 numbers (names the line).
    """
    path = Path(path)
    _require_file(path)
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as exc:
            raise ValueError(f"{path}:{line_no}: non-numeric value in a pose line") from exc
        if len(values) != 12:
            raise ValueError(f"{path}:{line_no}: {len(values)} values, expected 12 (a row-major 3x4 pose)")
        rows.append(values)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    if rows:
        poses[:, :3, :] = np.asarray(rows, np.float64).reshape(-1, 3, 4)
    return poses


def write_poses(path: str | Path, poses: np.ndarray) -> None:
    """Write (F, 4, 4) or (F, 3, 4) poses as ``poses.txt`` (12 values per line, KITTI's ``%e`` style)."""
    p = np.asarray(poses, np.float64)
    if p.ndim != 3 or p.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"poses must have shape (F, 4, 4) or (F, 3, 4), got {p.shape}")
    lines = (" ".join(f"{v:.9e}" for v in m[:3].reshape(-1)) for m in p)
    Path(path).write_text("".join(line + "\n" for line in lines))


def lidar_poses(cam_poses: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
    """cam0 poses (F, 4, 4) -> LiDAR poses (F, 4, 4): ``inv(Tr) @ pose @ Tr`` (LiDAR -> first LiDAR frame)."""
    Tr = np.asarray(T_cam_lidar, np.float64)
    return np.linalg.inv(Tr) @ np.asarray(cam_poses, np.float64) @ Tr


def camera_poses(lidar_pose: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
    """The inverse of :func:`lidar_poses`: ``Tr @ pose @ inv(Tr)``."""
    Tr = np.asarray(T_cam_lidar, np.float64)
    return Tr @ np.asarray(lidar_pose, np.float64) @ np.linalg.inv(Tr)


def read_times(path: str | Path) -> np.ndarray:
    """Read ``times.txt`` -> (F,) float64 seconds."""
    path = Path(path)
    _require_file(path)
    try:
        return np.asarray([float(v) for v in path.read_text().split()], np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric timestamp") from exc


def write_times(path: str | Path, times: np.ndarray) -> None:
    """Write (F,) seconds as ``times.txt`` (one ``%e`` value per line, as KITTI)."""
    Path(path).write_text("".join(f"{float(t):.6e}\n" for t in np.asarray(times).reshape(-1)))


# ------------------------------------------------------------------------------------------------------ images


def read_image(path: str | Path) -> np.ndarray:
    """Read ``image_2/NNNNNN.png`` -> (H, W, 3) uint8 RGB."""
    path = Path(path)
    _require_file(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_image(path: str | Path, image: np.ndarray, compress_level: int = 1) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    Image.fromarray(img, "RGB").save(Path(path), compress_level=compress_level)


# ----------------------------------------------------------------------------------------------------- pooling


def pool_labels(
    labels: np.ndarray, factor: int, empty_index: int = 0, ignore_index: int = IGNORE_INDEX, num_classes: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Pool (X, Y, Z) learning labels to a grid ``factor`` times coarser (SemanticKITTI 1_2 / 1_4 style).

    Rule per coarse voxel, over its ``factor**3`` fine voxels: ignored (``ignore_index``, e.g. invalid) fine
    voxels do not vote; if none is left the coarse voxel is ``ignore_index``; if every remaining one is
    ``empty_index`` it is empty; otherwise it takes the most frequent non-empty label (lowest id on ties).

    Returns:
        labels: (X/f, Y/f, Z/f) uint8 pooled labels.
        invalid: (X/f, Y/f, Z/f) bool, coarse voxels whose fine voxels are all ignored.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must have shape (X, Y, Z), got {lab.shape}")
    f = int(factor)
    if f < 1 or any(s % f for s in lab.shape):
        raise ValueError(f"pooling factor must be >= 1 and divide the grid shape {lab.shape}, got {factor}")
    if f == 1:
        out = lab.astype(np.uint8)
        return out, out == ignore_index
    X, Y, Z = (s // f for s in lab.shape)
    blocks = lab.reshape(X, f, Y, f, Z, f).transpose(0, 2, 4, 1, 3, 5).reshape(X * Y * Z, f**3)  # (V, f^3)
    valid = blocks != ignore_index
    if np.any(blocks[valid] >= num_classes):
        raise ValueError(f"labels must be < num_classes={num_classes} or {ignore_index}")
    vote = valid & (blocks != empty_index)
    # majority by run lengths in rows sorted ascending; non-voting entries sort last as ``none``
    none = np.iinfo(np.int32).max
    srt = np.sort(np.where(vote, blocks.astype(np.int32), none), axis=1)  # (V, f^3)
    n = srt.shape[1]
    pos = np.arange(n)
    run_start = np.r_[True, np.zeros(n - 1, bool)] | np.c_[np.ones((len(srt), 1), bool), srt[:, 1:] != srt[:, :-1]]
    start_idx = np.maximum.accumulate(np.where(run_start, pos, 0), axis=1)
    run_len = np.where(srt != none, pos - start_idx + 1, 0)  # (V, f^3) length of the run so far
    mode = np.take_along_axis(srt, run_len.argmax(axis=1)[:, None], axis=1)[:, 0]  # lowest id wins ties
    any_valid = valid.any(axis=1)
    any_vote = vote.any(axis=1)
    out = np.full(X * Y * Z, ignore_index, np.uint8)
    out[any_valid] = empty_index
    out[any_vote] = mode[any_vote].astype(np.uint8)
    return out.reshape(X, Y, Z), ~any_valid.reshape(X, Y, Z)


# ----------------------------------------------------------------------------------------------------- dataset


def sequence_dir(root: str | Path, sequence: str) -> Path:
    """``<root>/sequences/SS`` (``root`` may also be the ``sequences`` folder itself).

    Raises:
        FileNotFoundError: the sequence does not exist, naming the sequences that do.
    """
    root = Path(root)
    base = root / "sequences" if (root / "sequences").is_dir() else root
    seq = f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)
    path = base / seq
    if not path.is_dir():
        known = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise FileNotFoundError(f"unknown sequence {seq!r}: {path} does not exist (sequences found: {known})")
    return path


def _stems(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix == suffix and p.stem.isdigit())


def list_frames(seq_dir: str | Path, labelled: bool) -> list[str]:
    """Frame names of a sequence, checking that the folders agree.

    Args:
        labelled: ``True`` -> frames with ``voxels/*.label`` (every 5th frame in SemanticKITTI);
            ``False`` -> every ``velodyne`` frame.

    Raises:
        FileNotFoundError: ``velodyne/`` is missing or empty, or ``voxels/`` is missing when ``labelled``.
        ValueError: frames of ``image_2``, ``labels`` or ``voxels`` that have no velodyne scan, velodyne
            frames without an image, or labelled frames without their ``.invalid`` file.
    """
    seq_dir = Path(seq_dir)
    scans = _stems(seq_dir / "velodyne", ".bin")
    if not scans:
        raise FileNotFoundError(f"no velodyne scans in {seq_dir / 'velodyne'} (expected NNNNNN.bin files)")
    scan_set = set(scans)
    images = set(_stems(seq_dir / "image_2", ".png"))
    missing_img = sorted(scan_set - images)
    if missing_img:
        raise ValueError(
            f"{seq_dir}: {len(missing_img)} velodyne frames have no image_2/*.png, first {missing_img[:3]}"
        )
    for folder, suffix in (("image_2", ".png"), ("labels", ".label"), ("voxels", ".label"), ("voxels", ".bin")):
        extra = sorted(set(_stems(seq_dir / folder, suffix)) - scan_set)
        if extra:
            raise ValueError(
                f"{seq_dir / folder}: {len(extra)} *{suffix} frames have no velodyne scan, first {extra[:3]}"
            )
    if not labelled:
        return scans
    if not (seq_dir / "voxels").is_dir():
        raise FileNotFoundError(f"{seq_dir / 'voxels'} not found (labelled frames need voxels/NNNNNN.label)")
    frames = _stems(seq_dir / "voxels", ".label")
    no_invalid = sorted(set(frames) - set(_stems(seq_dir / "voxels", ".invalid")))
    if no_invalid:
        raise ValueError(f"{seq_dir / 'voxels'}: labelled frames without a .invalid file, first {no_invalid[:3]}")
    return frames


class SemanticKittiDataset(Dataset):
    """SemanticKITTI SSC frames as :class:`Sample` objects.

    Args:
        root: folder holding ``sequences/`` (or the ``sequences`` folder itself).
        sequences: sequence ids, e.g. ``["00", "01"]``.
        grid_scale: 1, 2 or 4: voxel labels pooled to a grid that many times coarser (:func:`pool_labels`).
        with_labels: ``True`` -> frames with voxel labels only, labels and invalid masks loaded;
            ``False`` -> every velodyne frame, no voxel labels (inference).
        pseudo_dir: sub-folder of a sequence holding 2D pseudo labels (loaded when the frame's PNG exists).
        max_points: keep at most this many points per scan (a random subset, fixed per frame).
        classes: class table (default: SemanticKITTI's).

    Each sample has ``frame_id = "SS/NNNNNN"``, the image and LiDAR scan, the camera-2 calibration sized to the
    image, the LiDAR pose (``inv(Tr) @ pose @ Tr``) when ``poses.txt`` exists, and when labelled the learning
    labels (``invalid`` voxels set to 255) and the invalid mask.
    """

    def __init__(
        self,
        root: str | Path,
        sequences: Sequence[str],
        grid_scale: int = 1,
        with_labels: bool = True,
        pseudo_dir: str = "pseudo_2d",
        max_points: int | None = None,
        classes: ClassTable | None = None,
    ) -> None:
        if grid_scale not in (1, 2, 4, 8):
            raise ValueError(f"grid_scale must be 1, 2, 4 or 8, got {grid_scale}")
        if isinstance(sequences, str):
            sequences = [sequences]
        if not sequences:
            raise ValueError("sequences must name at least one sequence")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        self.root = Path(root)
        self.grid_scale = int(grid_scale)
        self.with_labels = bool(with_labels)
        self.pseudo_dir = pseudo_dir
        self.max_points = max_points
        self.classes = classes if classes is not None else class_table("semantic_kitti")
        self.frames: list[tuple[str, str]] = []  # (sequence, frame name)
        self._seq_dirs: dict[str, Path] = {}
        self._poses: dict[str, np.ndarray | None] = {}
        for seq in sequences:
            seq_dir = sequence_dir(self.root, seq)
            name = seq_dir.name
            _require_file(seq_dir / "calib.txt")
            frames = list_frames(seq_dir, labelled=self.with_labels)
            self._seq_dirs[name] = seq_dir
            self._poses[name] = self._load_poses(seq_dir)
            self.frames.extend((name, f) for f in frames)
        if not self.frames:
            kind = "labelled (voxels/*.label)" if self.with_labels else "velodyne"
            raise ValueError(f"no {kind} frames in sequences {list(sequences)} under {self.root}")

    def _load_poses(self, seq_dir: Path) -> np.ndarray | None:
        path = seq_dir / "poses.txt"
        if not path.is_file():
            return None
        poses = read_poses(path)
        scans = _stems(seq_dir / "velodyne", ".bin")
        last = int(scans[-1])
        if len(poses) <= last:
            raise ValueError(f"{path}: {len(poses)} poses, expected at least {last + 1} (one per velodyne frame)")
        Tr = read_kitti_calib(seq_dir / "calib.txt").T_cam_lidar
        return lidar_poses(poses, Tr)

    def sequence_folder(self, sequence: str) -> Path:
        """The folder of one of the dataset's sequences (``sequence`` as in ``frame_id``, e.g. ``"08"``)."""
        return self._seq_dirs[sequence]

    def lidar_poses(self, sequence: str) -> np.ndarray | None:
        """(F, 4, 4) LiDAR poses (LiDAR -> first LiDAR frame) of a sequence; None without ``poses.txt``."""
        return self._poses[sequence]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        seq, frame = self.frames[index]
        view = self.camera_view(seq, frame)
        points = read_points(self._seq_dirs[seq] / "velodyne" / f"{frame}.bin")
        if self.max_points is not None and len(points) > self.max_points:
            rng = np.random.default_rng([int(seq) if seq.isdigit() else 0, int(frame)])
            keep = np.sort(rng.choice(len(points), self.max_points, replace=False))
            points = points[keep]
        voxel_labels = invalid = None
        if self.with_labels:
            voxel_labels, invalid = self.read_labels(seq, frame)
        poses = self._poses[seq]
        return Sample(
            f"{seq}/{frame}",
            points,
            [view],
            voxel_labels=voxel_labels,
            invalid=invalid,
            pose=None if poses is None else poses[int(frame)].copy(),
        )

    def camera_view(self, sequence: str, frame: str) -> CameraView:
        """The ``image_2`` view of one frame of a sequence: its image, the camera-2 calibration sized to it and its
        2D pseudo labels when ``pseudo_dir`` holds them (any velodyne frame, labelled or not).

        Raises:
            FileNotFoundError: the image is missing; ValueError: the pseudo labels do not have the image size.
        """
        seq_dir = self._seq_dirs[sequence]
        image = read_image(seq_dir / "image_2" / f"{frame}.png")
        calib = read_kitti_calib(seq_dir / "calib.txt", image_size=image.shape[:2])
        pseudo = None
        pseudo_path = seq_dir / self.pseudo_dir / f"{frame}.png"
        if self.pseudo_dir and pseudo_path.is_file():
            pseudo = read_label_png(pseudo_path)
            if pseudo.shape != image.shape[:2]:
                raise ValueError(f"{pseudo_path}: shape {pseudo.shape}, expected the image size {image.shape[:2]}")
        return CameraView("image_2", image, calib, pseudo)

    def read_labels(self, sequence: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
        """Learning voxel labels (invalid -> 255) and the invalid mask of one frame, pooled by ``grid_scale``.

        Returns:
            labels: (X, Y, Z) uint8, X = 256 / grid_scale etc.
            invalid: (X, Y, Z) bool.
        """
        vox = self._seq_dirs[sequence] / "voxels"
        raw = read_voxel_labels(vox / f"{frame}.label")
        invalid = read_voxel_bits(vox / f"{frame}.invalid")
        labels = self.classes.map_raw(raw)
        labels[invalid] = self.classes.ignore_index
        if self.grid_scale == 1:
            return labels, invalid
        return pool_labels(
            labels,
            self.grid_scale,
            empty_index=self.classes.empty_index,
            ignore_index=self.classes.ignore_index,
            num_classes=self.classes.num_classes,
        )
