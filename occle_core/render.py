"""PNG rendering of semantic occupancy grids (numpy + Pillow only).

- :func:`render_bev`: bird's-eye view, the top-most occupied voxel of each column in its class colour, darker
  the lower it is. Image rows run along -x (forward is up), columns along -y (left is left).
- :func:`render_perspective`: voxel cubes seen from behind and above the grid (behind the ego vehicle for a
  SemanticKITTI grid), looking forward (+x). Every exposed, camera-facing cube face is rasterised with a
  z-buffer (per-pixel ray/face intersection, vectorised over all faces and candidate pixels) and shaded by its
  orientation, with thin dark outlines where
  a surface of one class ends (creases, silhouettes, class borders).
- :func:`render_comparison`: prediction vs truth side by side (perspective and bird's-eye views), a title,
  optional text lines and a legend of the classes present; written as a PNG.

Voxels drawn: labels that are neither the empty class nor ``ignore_index`` (255) nor out of range.
All coordinates are voxel indices (voxels are cubes), so any grid shape works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable

BACKGROUND = (40, 43, 52)
TEXT = (235, 235, 235)
# brightness of a face by its outward normal: +x, -x, +y, -y, +z (top), -z (bottom)
CANDIDATES_PER_CHUNK = 1 << 22  # candidate (face, pixel) pairs rasterised at once
FACE_SHADE = {(0, 1): 0.78, (0, -1): 0.78, (1, 1): 0.64, (1, -1): 0.64, (2, 1): 1.0, (2, -1): 0.5}


def occupied_mask(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    """(X, Y, Z) bool: voxels that are drawn (not empty, not ignored, a known class)."""
    lab = np.asarray(labels)
    return (lab != classes.empty_index) & (lab < classes.num_classes) & (lab != classes.ignore_index)


def _check_grid(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"{name} must be a (X, Y, Z) grid, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {lab.dtype}")
    return lab


def render_bev(
    labels: np.ndarray,
    classes: ClassTable,
    scale: int = 2,
    grid: VoxelGrid | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """Bird's-eye view of a grid.

    Args:
        labels: (X, Y, Z) integer class ids.
        classes: class table (colours, empty and ignore ids).
        scale: pixels per voxel (integer upscaling).
        grid: optional grid geometry; when given, the LiDAR origin (ego) is marked by a white square.
        background: colour of columns without any drawn voxel.

    Returns:
        (X * scale, Y * scale, 3) uint8 RGB; pixel (r, c) shows column i = X-1-r//scale, j = Y-1-c//scale.
    """
    lab = _check_grid(labels)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    X, Y, Z = lab.shape
    occ = occupied_mask(lab, classes)  # (X, Y, Z)
    has = occ.any(axis=2)  # (X, Y)
    top = Z - 1 - np.argmax(occ[:, :, ::-1], axis=2)  # (X, Y) highest occupied k
    top_label = np.take_along_axis(lab, top[:, :, None], axis=2)[:, :, 0]
    rgb = classes.colorize(top_label).astype(np.float32)  # (X, Y, 3)
    shade = 0.6 + 0.4 * top / max(Z - 1, 1)
    img = np.where(has[:, :, None], rgb * shade[:, :, None], np.asarray(background, np.float32))
    img = img[::-1, ::-1]  # forward up, left on the left
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    if grid is not None:
        if tuple(grid.shape) != lab.shape:
            raise ValueError(f"grid shape {grid.shape} differs from the labels shape {lab.shape}")
        ij = np.floor(-np.asarray(grid.origin[:2]) / grid.voxel_size).astype(int)
        if 0 <= ij[0] < X and 0 <= ij[1] < Y:
            r, c = (X - 1 - ij[0]) * scale, (Y - 1 - ij[1]) * scale
            h = max(scale, 3)
            img[max(r - h, 0) : r + h + scale, max(c - h, 0) : c + h + scale] = 255
    return np.ascontiguousarray(img)


@dataclass(frozen=True)
class PerspectiveView:
    """A pinhole camera in voxel-index coordinates (x forward, y left, z up; one unit = one voxel).

    Attributes:
        eye: (3,) camera position.
        target: (3,) point the camera looks at.
        fov_deg: horizontal field of view in degrees.
        width, height: image size in pixels.
    """

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float = 50.0
    width: int = 640
    height: int = 400

    @classmethod
    def behind(
        cls, shape: tuple[int, int, int], elevation_deg: float = 38.0, width: int = 640, height: int = 400
    ) -> PerspectiveView:
        """The default view of a grid of ``shape``: from behind (-x) and above, looking at the grid."""
        X, Y, _ = shape
        target = np.array([0.38 * X, 0.5 * Y, 0.0])
        el = np.deg2rad(elevation_deg)
        dist = 1.05 * max(X, Y)
        eye = target + dist * np.array([-np.cos(el), 0.0, np.sin(el)])
        return cls(tuple(float(v) for v in eye), tuple(float(v) for v in target), 50.0, width, height)

    def basis(self) -> tuple[np.ndarray, float, float, float]:
        """(R (3, 3) world->camera rows [right, down, forward], f, cx, cy) of this view."""
        eye, target = np.asarray(self.eye, np.float64), np.asarray(self.target, np.float64)
        fwd = target - eye
        if np.linalg.norm(fwd) == 0:
            raise ValueError("view eye and target coincide")
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        if np.linalg.norm(right) < 1e-9:
            raise ValueError("view direction must not be vertical")
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        f = 0.5 * self.width / np.tan(np.deg2rad(self.fov_deg) / 2)
        return np.stack([right, down, fwd]), f, self.width / 2, self.height / 2


def _exposed_faces(lab: np.ndarray, occ: np.ndarray, eye: np.ndarray) -> tuple[np.ndarray, ...]:
    """Exposed cube faces that face the camera.

    Returns:
        vox: (F, 3) int voxel index of each face; axis: (F,) normal axis; sign: (F,) +1 / -1;
        same: (F, 4) bool, whether the neighbour voxel at -b, +b, -c, +c (b, c = the in-plane axes
        (axis + 1) % 3 and (axis + 2) % 3) carries the same exposed face with the same label, i.e. whether
        that border of the face is interior to a flat surface of one class (no edge is drawn there).
    """
    X, Y, Z = occ.shape
    pad = np.pad(occ, 1)  # (X+2, Y+2, Z+2), outside = free
    lab_p = np.pad(lab, 1, constant_values=255)
    inner = (slice(1, X + 1), slice(1, Y + 1), slice(1, Z + 1))
    vox_l, axis_l, sign_l, same_l = [], [], [], []
    for a in range(3):
        for s in (1, -1):
            # face of voxel v with normal s*e_a: exposed when that neighbour is free; its plane is
            # v_a + 1 (s = +1) or v_a (s = -1); camera-facing when s * (eye_a - plane) > 0
            sl = list(inner)
            sl[a] = slice(1 + s, occ.shape[a] + 1 + s)
            exposed = np.zeros_like(pad)
            exposed[inner] = occ & ~pad[tuple(sl)]
            idx = np.argwhere(exposed[inner])  # (n, 3)
            plane = idx[:, a] + (1 if s > 0 else 0)
            idx = idx[s * (eye[a] - plane) > 0]
            q = idx + 1  # padded coordinates
            own = lab_p[q[:, 0], q[:, 1], q[:, 2]]
            flags = []
            for b in ((a + 1) % 3, (a + 2) % 3):
                for step in (-1, 1):
                    w = q.copy()
                    w[:, b] += step
                    flags.append(exposed[w[:, 0], w[:, 1], w[:, 2]] & (lab_p[w[:, 0], w[:, 1], w[:, 2]] == own))
            vox_l.append(idx)
            axis_l.append(np.full(len(idx), a, np.int64))
            sign_l.append(np.full(len(idx), s, np.int64))
            same_l.append(np.stack(flags, axis=1).reshape(-1, 4))
    return np.concatenate(vox_l), np.concatenate(axis_l), np.concatenate(sign_l), np.concatenate(same_l)


def render_perspective(
    labels: np.ndarray,
    classes: ClassTable,
    view: PerspectiveView | None = None,
    background: tuple[int, int, int] = BACKGROUND,
    edges: bool = True,
) -> np.ndarray:
    """Perspective view of the voxel cubes of a grid.

    Args:
        labels: (X, Y, Z) integer class ids.
        classes: class table.
        view: camera; default :meth:`PerspectiveView.behind` of the grid shape (640 x 400).
        background: colour where no voxel is seen.
        edges: darken the outlines of flat same-class surfaces (faces at least 3 pixels wide).

    Returns:
        (view.height, view.width, 3) uint8 RGB.
    """
    lab = _check_grid(labels)
    view = view or PerspectiveView.behind(lab.shape)
    W, H = int(view.width), int(view.height)
    R, f, cx, cy = view.basis()
    eye = np.asarray(view.eye, np.float64)
    img = np.empty((H * W, 3), np.float64)
    img[:] = background
    occ = occupied_mask(lab, classes)
    vox, axis, sign, same = _exposed_faces(lab, occ, eye)  # (F, 3), (F,), (F,), (F, 4)
    if len(vox) == 0:
        return img.reshape(H, W, 3).astype(np.uint8)

    # the 4 corners of every face: fixed coordinate on the normal axis, unit square on the two others
    F = len(vox)
    ax_b, ax_c = (axis + 1) % 3, (axis + 2) % 3  # (F,) the in-plane axes
    ar = np.arange(F)
    plane = vox[ar, axis] + (sign > 0)  # (F,)
    lo_b, lo_c = vox[ar, ax_b], vox[ar, ax_c]  # (F,)
    corners = np.repeat(vox[:, None, :].astype(np.float64), 4, axis=1)  # (F, 4, 3)
    corners[ar, :, axis] = plane[:, None]
    corners[ar, :, ax_b] = lo_b[:, None] + np.array([0, 1, 1, 0])
    corners[ar, :, ax_c] = lo_c[:, None] + np.array([0, 0, 1, 1])
    cam = (corners - eye) @ R.T  # (F, 4, 3) camera frame
    in_front = (cam[:, :, 2] > 0.5).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = f * cam[:, :, 0] / cam[:, :, 2] + cx  # (F, 4)
        v = f * cam[:, :, 1] / cam[:, :, 2] + cy
    # candidate pixels: those whose centre (p + 0.5) lies in the face's projected bounding box
    u0 = np.ceil(u.min(1) - 0.5)
    u1 = np.floor(u.max(1) - 0.5)
    v0 = np.ceil(v.min(1) - 0.5)
    v1 = np.floor(v.max(1) - 0.5)
    keep = in_front & (u1 >= 0) & (u0 <= W - 1) & (v1 >= 0) & (v0 <= H - 1)
    u0 = np.clip(u0, 0, W - 1).astype(np.int64)
    v0 = np.clip(v0, 0, H - 1).astype(np.int64)
    bw = np.where(keep, np.clip(u1, 0, W - 1) - u0 + 1, 0).clip(0).astype(np.int64)  # (F,) bbox width
    bh = np.where(keep, np.clip(v1, 0, H - 1) - v0 + 1, 0).clip(0).astype(np.int64)  # (F,) bbox height
    area = bw * bh
    # faces smaller than a pixel may cover no pixel centre: they are also splatted at their projected centre
    centre = cam.mean(1)  # (F, 3) camera frame
    with np.errstate(divide="ignore", invalid="ignore"):
        cu = np.floor(f * centre[:, 0] / centre[:, 2] + cx)
        cv = np.floor(f * centre[:, 1] / centre[:, 2] + cy)
    small = keep & (area <= 1) & (cu >= 0) & (cu < W) & (cv >= 0) & (cv < H)
    splat_pix = np.where(small, cv * W + cu, 0).astype(np.int64)
    # per-face colour: class colour x orientation shade x a depth cue (far faces up to 18% darker); the depth
    # range is the grid's, so two grids of one shape are shaded alike
    shade_lut = np.array([[FACE_SHADE[(a, -1)], FACE_SHADE[(a, 1)]] for a in range(3)])  # (3, 2)
    box = np.stack(np.meshgrid(*[[0, n] for n in lab.shape], indexing="ij"), -1).reshape(-1, 3)  # (8, 3)
    box_depth = (box - eye) @ R[2]
    near, far = max(box_depth.min(), 0.5), max(box_depth.max(), 1.0)
    fog = 1.0 - 0.18 * np.clip((centre[:, 2] - near) / max(far - near, 1e-6), 0, 1)
    face_rgb = classes.colors.astype(np.float64)[lab[vox[:, 0], vox[:, 1], vox[:, 2]]]  # (F, 3)
    face_rgb *= (shade_lut[axis, (sign > 0).astype(np.int64)] * fog)[:, None]
    # projected lengths (pixels) of each face's b and c sides, for edge bands of about one pixel
    len_b = np.hypot(u[:, 1] - u[:, 0], v[:, 1] - v[:, 0])
    len_c = np.hypot(u[:, 3] - u[:, 0], v[:, 3] - v[:, 0])
    w_b = np.minimum(1.1 / np.maximum(len_b, 1e-6), 0.34)
    w_c = np.minimum(1.1 / np.maximum(len_c, 1e-6), 0.34)
    draw_edges = edges & (np.maximum(len_b, len_c) >= 3)

    # rasterise in chunks of faces (bounded memory even for faces close to the camera); the z-buffer keeps the
    # nearest depth so far and a candidate writes its colour when it is (one of) the nearest
    zbuf = np.full(H * W, np.inf)
    cum = np.cumsum(area)
    cuts = np.searchsorted(cum, np.arange(CANDIDATES_PER_CHUNK, cum[-1], CANDIDATES_PER_CHUNK), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [F]]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        a_rng = np.arange(lo, hi)
        fid = np.repeat(a_rng, area[lo:hi])  # (M,) face of each candidate
        local = np.arange(len(fid)) - np.repeat(cum[lo:hi] - area[lo:hi] - (cum[lo - 1] if lo else 0), area[lo:hi])
        px = u0[fid] + local % bw[fid]
        py = v0[fid] + local // bw[fid]
        # ray through each candidate pixel centre, in world coordinates, scaled so that camera depth = t
        d = np.stack([(px + 0.5 - cx) / f, (py + 0.5 - cy) / f, np.ones(len(px))], axis=1) @ R  # (M, 3)
        m = np.arange(len(fid))
        a_f, b_f, c_f = axis[fid], ax_b[fid], ax_c[fid]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (plane[fid] - eye[a_f]) / d[m, a_f]  # (M,) depth of the ray's hit on the face plane
        sb = eye[b_f] + t * d[m, b_f] - lo_b[fid]  # in-face coordinates, inside if both in [0, 1]
        sc = eye[c_f] + t * d[m, c_f] - lo_c[fid]
        hit = (t > 0) & (sb >= 0) & (sb <= 1) & (sc >= 0) & (sc <= 1)
        fid, px, py, t, sb, sc = fid[hit], px[hit], py[hit], t[hit], sb[hit], sc[hit]
        edge = np.zeros(len(fid), bool)
        if edges:
            nb = same[fid]  # (n, 4) borders shared with a same-class coplanar face: no edge there
            e = ((sb < w_b[fid]) & ~nb[:, 0]) | ((sb > 1 - w_b[fid]) & ~nb[:, 1])
            e |= ((sc < w_c[fid]) & ~nb[:, 2]) | ((sc > 1 - w_c[fid]) & ~nb[:, 3])
            edge = e & draw_edges[fid]
        sp = a_rng[small[lo:hi]]
        fid = np.concatenate([fid, sp])
        pix = np.concatenate([py * W + px, splat_pix[sp]])
        depth = np.concatenate([t, centre[sp, 2]])
        edge = np.concatenate([edge, np.zeros(len(sp), bool)])
        np.minimum.at(zbuf, pix, depth)
        win = depth <= zbuf[pix]
        img[pix[win]] = face_rgb[fid[win]] * np.where(edge[win], 0.62, 1.0)[:, None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as a PNG (parent folders are created); returns the path."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png needs (H, W), (H, W, 3) or (H, W, 4) uint8, got {arr.shape} {arr.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_comparison(
    pred: np.ndarray,
    truth: np.ndarray,
    classes: ClassTable,
    path: str | Path | None = None,
    title: str = "",
    lines: tuple[str, ...] | list[str] = (),
    mask: np.ndarray | None = None,
    grid: VoxelGrid | None = None,
    view: PerspectiveView | None = None,
) -> np.ndarray:
    """Prediction and truth side by side: perspective views on top, bird's-eye views below, then a legend.

    Args:
        pred, truth: (X, Y, Z) integer class ids (255 = ignored, not drawn).
        classes: class table.
        path: where to write the PNG (None: only return the image).
        title: heading text; lines: extra text lines under it (e.g. the frame's IoU / mIoU).
        mask: optional (X, Y, Z) bool; voxels where it is False are drawn in neither view (e.g. ``~invalid``
            for SemanticKITTI, the camera mask for Occ3D), so both panels show the evaluated region.
        grid: optional grid geometry (marks the ego in the bird's-eye views).
        view: perspective camera (default :meth:`PerspectiveView.behind`).

    Returns:
        (H, W, 3) uint8 RGB of the whole figure.
    """
    pred = _check_grid(pred, "pred")
    truth = _check_grid(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != pred.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the grid shape {pred.shape}")
        pred = np.where(mask, pred, classes.ignore_index)
        truth = np.where(mask, truth, classes.ignore_index)
    view = view or PerspectiveView.behind(pred.shape)
    bev_scale = max(1, 512 // max(pred.shape[:2]))
    panels = []
    for grid_labels in (pred, truth):
        persp = render_perspective(grid_labels, classes, view)
        bev = render_bev(grid_labels, classes, scale=bev_scale, grid=grid)
        panels.append((persp, bev))
    col_w = max(view.width, panels[0][1].shape[1])
    gap = 12
    font, small = _font(20), _font(14)
    present = np.union1d(np.unique(pred), np.unique(truth))
    present = [int(c) for c in present if c < classes.num_classes and c != classes.empty_index]
    # legend layout: swatch + name per entry, wrapped to the figure width
    fig_w = 2 * col_w + 3 * gap
    entry_w = 14 + 6 + max([int(small.getlength(classes.names[c])) for c in present] + [10]) + 18
    per_row = max(1, (fig_w - 2 * gap) // entry_w)
    legend_rows = (len(present) + per_row - 1) // per_row
    head_h = 34 + 20 * len(lines)
    label_h = 24
    body_h = view.height + gap + panels[0][1].shape[0]
    fig_h = head_h + label_h + body_h + gap + legend_rows * 22 + gap
    fig = Image.new("RGB", (fig_w, fig_h), (22, 24, 30))
    draw = ImageDraw.Draw(fig)
    draw.text((gap, 6), title, fill=TEXT, font=font)
    for i, line in enumerate(lines):
        draw.text((gap, 32 + 20 * i), line, fill=(200, 200, 200), font=small)
    for col, (name, (persp, bev)) in enumerate(zip(("prediction", "ground truth"), panels)):
        x0 = gap + col * (col_w + gap)
        draw.text((x0, head_h + 2), name, fill=TEXT, font=font)
        y0 = head_h + label_h
        fig.paste(Image.fromarray(persp), (x0 + (col_w - persp.shape[1]) // 2, y0))
        fig.paste(Image.fromarray(bev), (x0 + (col_w - bev.shape[1]) // 2, y0 + view.height + gap))
    y = head_h + label_h + body_h + gap
    for n, c in enumerate(present):
        x = gap + (n % per_row) * entry_w
        yy = y + (n // per_row) * 22
        draw.rectangle((x, yy + 2, x + 14, yy + 16), fill=tuple(int(v) for v in classes.colors[c]), outline=TEXT)
        draw.text((x + 20, yy + 1), classes.names[c], fill=TEXT, font=small)
    out = np.asarray(fig)
    if path is not None:
        save_png(out, path)
    return out


def _fit_width(img: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(img.shape[0] * width / img.shape[1]))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))


def render_sample_overview(
    image: np.ndarray,
    labels: np.ndarray,
    classes: ClassTable,
    pseudo2d: np.ndarray | None = None,
    path: str | Path | None = None,
) -> np.ndarray:
    """One frame for people: camera image, 2D pseudo labels (if any), voxel labels in perspective and BEV.

    Args:
        image: (H, W, 3) uint8 RGB camera image.
        labels: (X, Y, Z) voxel classes (255 = ignored, not drawn).
        pseudo2d: (H, W) uint8 pseudo labels or None.

    Returns:
        The (H', W, 3) uint8 figure, also written to ``path`` when given.
    """
    width = image.shape[1]
    rows = [image] + ([classes.colorize(pseudo2d)] if pseudo2d is not None else [])
    persp, bev = render_perspective(labels, classes), render_bev(labels, classes)
    left_w = round(width * persp.shape[1] / (persp.shape[1] + bev.shape[1] * persp.shape[0] / bev.shape[0]))
    left, right = _fit_width(persp, left_w), _fit_width(bev, width - left_w)
    h = max(left.shape[0], right.shape[0])
    pad = [np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255) for a in (left, right)]
    out = np.concatenate([*rows, np.concatenate(pad, axis=1)], axis=0)
    if path is not None:
        save_png(out, path)
    return out
