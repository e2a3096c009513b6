"""Layered video rendering: backgrounds, objects, occluder, GT flow and masks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.config import SynthConfig
from pipeline.synth.geometry import (
    FAR,
    TPS,
    apply_h,
    pixel_grid,
    similarity,
    translation,
)
from pipeline.synth.motion import (
    ObjectMotion,
    camera_trajectory,
    draw_camera_motion,
    draw_object_motion,
    fit_camera,
    glue_to_camera,
    map_points,
    max_point_speed,
    min_tps_jacobian,
    object_trajectory,
)
from pipeline.synth.shapes import (
    PAD,
    Sprite,
    bar_vertices,
    box_probe,
    grid_handles,
    polygon_sprite,
    rasterize_polygon,
    silhouette_canvas,
)
from pipeline.synth.sources import SourceBank
from pipeline.synth.textures import color_jitter


def _prepare_texture(rng: np.random.Generator, tex: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Colour jitter, then the anti-aliasing prefilter."""
    tex = color_jitter(rng, tex, cfg.color_jitter)
    if cfg.texture_blur > 0:
        tex = cv2.GaussianBlur(tex, (0, 0), cfg.texture_blur)
    return tex

MAX_OBJECTS_STREAMS = 8  # independent random streams reserved for objects


def _streams(seed: int, index: int) -> list[np.random.Generator]:
    """Independent generators for (plan, background, occluder, stationary, objects...)."""
    ss = np.random.SeedSequence([int(seed), int(index)])
    return [np.random.default_rng(s) for s in ss.spawn(4 + MAX_OBJECTS_STREAMS)]


def _draw_count(rng: np.random.Generator, cfg: SynthConfig) -> int:
    p = np.asarray(cfg.object_count_probs, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum())) + 1


def draw_num_objects(cfg: SynthConfig, index: int, seed: int) -> int:
    """The object count :func:`render_video` will use for (seed, index), without rendering."""
    return _draw_count(_streams(seed, index)[0], cfg)


# ----------------------------------------------------------------------------- layers
@dataclass
class Layer:
    sprite: Sprite
    hs: list            # per-frame canvas -> frame homographies
    tps: list           # per-frame TPS (or None)
    tps_inv: list       # per-frame TPS fitted in the inverse direction (Newton start), or None
    margin: list        # per-frame max |W_t(q) - q| over the canvas (+ slack), px
    gate: list          # per-frame bound on |tps_inv(s) - W_t^-1(s)| (+ slack), px
    dist: np.ndarray | None  # distance (px) from each canvas pixel to the shape


def _tps_margin(tps: TPS | None, shape: tuple[int, int]) -> float:
    if tps is None:
        return 0.0
    h, w = shape
    g = pixel_grid(9, 9).reshape(-1, 2) * np.array([(w - 1) / 8, (h - 1) / 8])
    pts = np.concatenate([g, tps.center + tps.src_n * tps.scale])
    return float(np.sqrt(((tps(pts) - pts) ** 2).sum(-1)).max()) + 2.0


def _make_layer(sprite: Sprite, hs: list, tps: list) -> Layer:
    inv, margin, gate = [], [], []
    h, w = sprite.shape
    probe = pixel_grid(17, 17).reshape(-1, 2) * np.array([(w - 1) / 16, (h - 1) / 16])
    for f in tps:
        if f is None:
            inv.append(None)
            margin.append(0.0)
            gate.append(0.0)
        else:
            src = f.center + f.src_n * f.scale
            fi = TPS(f(src), src)
            inv.append(fi)
            margin.append(_tps_margin(f, sprite.shape))
            err = np.sqrt(((fi(f(probe)) - probe) ** 2).sum(-1)).max()
            gate.append(2.0 * float(err) + 3.0)
    dist = None
    if any(f is not None for f in tps):
        dist = cv2.distanceTransform((sprite.mask <= 0.01).astype(np.uint8), cv2.DIST_L2, 5)
    return Layer(sprite, hs, tps, inv, margin, gate, dist)


def _render_layer_frame(layer: Layer, t: int, h: int, w: int, need_fwd: bool, need_bwd: bool):
    """Render one layer at frame t inside its bounding box.

    Returns ``(y0, x0, amodal[bool], rgb[uint8], fwd[2, n], bwd[2, n], stats)``
    for the ROI, where fwd/bwd hold the flow at the amodal pixels (row-major), or
    ``None`` when the layer is outside the frame.
    """
    sp = layer.sprite
    sh, sw = sp.shape
    hm, tps = layer.hs[t], layer.tps[t]
    m = layer.margin[t]
    box = np.array([[-0.5 - m, -0.5 - m], [sw - 0.5 + m, -0.5 - m], [sw - 0.5 + m, sh - 0.5 + m],
                    [-0.5 - m, sh - 0.5 + m]])
    corners = apply_h(hm, box)
    if np.any(corners >= FAR):
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
        y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
        x1 = min(int(np.ceil(corners[:, 0].max())) + 2, w)
        y1 = min(int(np.ceil(corners[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    grid = pixel_grid(y1 - y0, x1 - x0, x0, y0)
    s = apply_h(np.linalg.inv(hm), grid)
    stats = {"newton_points": 0, "newton_failed": 0}
    if tps is not None:
        flat = s.reshape(-1, 2)
        inside = ((flat[:, 0] > -1 - m) & (flat[:, 0] < sw + m) & (flat[:, 1] > -1 - m) & (flat[:, 1] < sh + m))
        q = np.full_like(flat, FAR)
        if inside.any():
            si = flat[inside]
            q0 = layer.tps_inv[t](si)
            # Newton only where the initial guess is within the guess-error bound of the shape
            qc = np.stack([np.clip(q0[:, 0], 0, sw - 1), np.clip(q0[:, 1], 0, sh - 1)], -1)
            off = np.sqrt(((q0 - qc) ** 2).sum(-1))
            near = layer.dist[qc[:, 1].round().astype(np.int64), qc[:, 0].round().astype(np.int64)] - off - 1.0
            near = near <= layer.gate[t]
            qi = np.full_like(si, FAR)
            if near.any():
                qn, ok = tps.inverse(si[near], init=q0[near])
                qn[~ok] = FAR
                qi[near] = qn
                stats["newton_points"] = int(near.sum())
                stats["newton_failed"] = int((~ok).sum())
            q[inside] = qi
        q = q.reshape(s.shape)
    else:
        q = s
    mx = q[..., 0].astype(np.float32)
    my = q[..., 1].astype(np.float32)
    mask = cv2.remap(sp.mask, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    amodal = mask > 0.5
    if not amodal.any():
        return None
    rgb = cv2.remap(sp.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    qa = q[amodal]
    pa = grid[amodal]
    fwd = bwd = None
    if need_fwd:
        fwd = (map_points(layer.hs[t + 1], layer.tps[t + 1], qa) - pa).T
    if need_bwd:
        bwd = (map_points(layer.hs[t - 1], layer.tps[t - 1], qa) - pa).T
    return y0, x0, amodal, rgb, fwd, bwd, stats


def _homography_flows(hs: list, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward/backward flow [T, 2, h, w] of a full-frame homography layer."""
    t = len(hs)
    grid = pixel_grid(h, w)
    fwd = np.zeros((t, 2, h, w), np.float32)
    bwd = np.zeros((t, 2, h, w), np.float32)
    for i in range(t):
        inv = np.linalg.inv(hs[i])
        if i + 1 < t:
            fwd[i] = np.moveaxis(apply_h(hs[i + 1] @ inv, grid) - grid, -1, 0)
        if i > 0:
            bwd[i] = np.moveaxis(apply_h(hs[i - 1] @ inv, grid) - grid, -1, 0)
    return fwd, bwd


def _dis_flows(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimated flow of a real clip (OpenCV DIS, medium preset)."""
    t, h, w = frames.shape[:3]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd = np.zeros((t, 2, h, w), np.float32)
    bwd = np.zeros((t, 2, h, w), np.float32)
    for i in range(t):
        if i + 1 < t:
            fwd[i] = np.moveaxis(dis.calc(gray[i], gray[i + 1], None), -1, 0)
        if i > 0:
            bwd[i] = np.moveaxis(dis.calc(gray[i], gray[i - 1], None), -1, 0)
    return fwd, bwd


# ----------------------------------------------------------------------------- sprites
def _object_sprite(rng: np.random.Generator, cfg: SynthConfig, bank: SourceBank, use_sil: bool) -> Sprite:
    radius = rng.uniform(*cfg.object_size) * min(cfg.height, cfg.width) / 2
    sil = bank.silhouette(rng, cfg.silhouette_min_area) if use_sil else None
    if sil is not None:
        crop, info = sil
        mask, box = silhouette_canvas(crop, radius, flip=bool(rng.random() < 0.5))
        handles = grid_handles(box, cfg.tps_grid)
        probe = box_probe(box)
        center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        kind, extra = "silhouette", {"source": info}
    else:
        n = int(rng.integers(cfg.polygon_vertices[0], cfg.polygon_vertices[1] + 1))
        mask, verts, extra = polygon_sprite(rng, radius, n, cfg.polygon_min_spacing, cfg.polygon_min_area,
                                            cfg.p_convex)
        handles = verts
        side = mask.shape[0]
        center = np.array([(side - 1) / 2, (side - 1) / 2])
        probe = np.concatenate([verts, box_probe(np.array([PAD, PAD, side - 1 - PAD, side - 1 - PAD]), 3)])
        kind = "polygon"
    tex, tex_info = bank.texture(rng, mask.shape[0], mask.shape[1], cfg.p_natural_texture)
    tex = _prepare_texture(rng, tex, cfg)
    extra = dict(extra, texture=tex_info)
    return Sprite(mask=mask, texture=tex, center=center, radius=float(radius), handles=handles, probe=probe,
                  kind=kind, info=extra)


def _fit_object_motion(m: ObjectMotion, sp: Sprite, cfg: SynthConfig) -> tuple[list, list, dict]:
    """Build the trajectory, removing TPS fold-overs and enforcing the speed cap."""
    t = cfg.num_frames
    info = {"tps_scaled": 1.0, "speed_scaled": 1.0}
    if m.handles is not None:
        ys, xs = np.nonzero(sp.mask > 0.01)
        step = max(1, len(xs) // 400)
        pts = np.stack([xs[::step], ys[::step]], -1).astype(np.float64)
        for _ in range(8):
            _, tps = object_trajectory(m, t, sp.center, sp.radius)
            if min_tps_jacobian(tps, pts) >= cfg.tps_min_jacobian:
                break
            m.tps_k *= 0.5
        else:
            m.tps_k = 0.0
        info["tps_scaled"] = m.tps_k
    for _ in range(30):
        hs, tps = object_trajectory(m, t, sp.center, sp.radius)
        v = max_point_speed(hs, tps, sp.probe)
        if v <= cfg.max_point_speed:
            break
        m.k *= 0.9 * cfg.max_point_speed / v
    info["speed_scaled"] = m.k
    info["max_point_speed"] = v
    return hs, tps, info


def _occluder(rng: np.random.Generator, cfg: SynthConfig, bank: SourceBank, cam: list, layers: list) -> tuple[Layer, dict]:
    radius = rng.uniform(*cfg.occluder_size) * min(cfg.height, cfg.width) / 2
    bar = bool(rng.random() < cfg.p_occluder_bar)
    if bar:
        v = bar_vertices(rng, radius)
        side = int(np.ceil(2 * radius)) + 2 * PAD
        c = (side - 1) / 2
        mask = rasterize_polygon(v + c, side, side)
    else:
        n = int(rng.integers(cfg.polygon_vertices[0], cfg.polygon_vertices[1] + 1))
        mask, _, _ = polygon_sprite(rng, radius, n, cfg.polygon_min_spacing, cfg.polygon_min_area, cfg.p_convex)
        side = mask.shape[0]
        c = (side - 1) / 2
    tex, tex_info = bank.texture(rng, side, side, cfg.p_natural_texture)
    tex = _prepare_texture(rng, tex, cfg)
    # place it over a random object at a random frame, then let it ride the camera
    o = int(rng.integers(len(layers)))
    t0 = int(rng.integers(cfg.num_frames))
    lay = layers[o]
    pos = map_points(lay.hs[t0], lay.tps[t0], lay.sprite.center[None])[0]
    pos = pos + rng.uniform(-0.5, 0.5, 2) * lay.sprite.radius
    place = translation(*pos) @ similarity(rng.uniform(-180, 180), 1.0) @ translation(-c, -c)
    hs = [cam[t] @ np.linalg.inv(cam[t0]) @ place for t in range(cfg.num_frames)]
    sprite = Sprite(mask=mask, texture=tex, center=np.array([c, c]), radius=float(radius),
                    handles=np.zeros((0, 2)), probe=np.zeros((0, 2)), kind="bar" if bar else "polygon")
    info = {"kind": sprite.kind, "radius": float(radius), "near_object": o, "frame": t0, "texture": tex_info}
    return _make_layer(sprite, hs, [None] * cfg.num_frames), info


# ----------------------------------------------------------------------------- main entry
def render_video(cfg: SynthConfig | None = None, index: int = 0, seed: int = 0,
                 bank: SourceBank | None = None) -> dict:
    """Render synthetic video ``index`` of the split seeded by ``seed``.

    Returns a dict of numpy arrays (see the package docstring) plus ``meta``.
    The same (cfg, index, seed, bank contents) always gives byte-identical arrays.
    """
    cfg = (cfg or SynthConfig()).validate()
    bank = bank if bank is not None else SourceBank(None)
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    rng_plan, rng_bg, rng_occ, rng_stat, *rng_obj = _streams(seed, index)

    # ---------------------------------------------------------------- plan
    n_obj = _draw_count(rng_plan, cfg)
    if n_obj > MAX_OBJECTS_STREAMS:
        raise ValueError(f"at most {MAX_OBJECTS_STREAMS} objects supported")
    u_sil, u_tps, u_bg, u_stat, u_occ, u_static = rng_plan.random(6)
    clips_ok = bank.has_clips(T)
    use_sil = bank.has_silhouettes and u_sil < cfg.p_silhouette
    use_tps = u_tps < cfg.p_tps
    bg_clip = clips_ok and u_bg < cfg.p_bg_clip
    p_clip = cfg.p_bg_clip if clips_ok else 0.0
    p_stat = min(1.0, cfg.p_stationary / (1.0 - p_clip)) if p_clip < 1 else 0.0
    want_stationary = u_stat < p_stat
    want_occluder = u_occ < cfg.p_occluder
    order = rng_plan.permutation(n_obj)  # order[o] = depth rank, 0 = front-most

    meta: dict = {"seed": int(seed), "index": int(index), "num_objects": n_obj, "sprites": "silhouette" if use_sil else "polygon",
                  "tps": bool(use_tps), "order": order.tolist(), "bank": bank.describe(), "config": cfg.to_dict()}

    # ---------------------------------------------------------------- background
    bg_info: dict = {}
    clip = bank.clip(rng_bg, T, H, W, cfg.clip_steps, cfg.clip_crop_range, cfg.clip_max_fg_overlap) if bg_clip else None
    if clip is not None:
        frames, bg_info = clip
        bg_rgb = color_jitter(rng_bg, frames, cfg.color_jitter)
        if cfg.clip_flow == "dis":
            bg_fwd, bg_bwd = _dis_flows(bg_rgb)
        else:
            bg_fwd = np.zeros((T, 2, H, W), np.float32)
            bg_bwd = np.zeros((T, 2, H, W), np.float32)
        # the occluder needs some camera-like motion: draw one (unrelated to the clip's)
        cam_m = draw_camera_motion(rng_bg, cfg, static=bool(u_static < cfg.p_static_camera))
        cam = camera_trajectory(cam_m, cfg, (int(round(H * cfg.bg_canvas_scale)), int(round(W * cfg.bg_canvas_scale))))
        meta.update(background="clip", bg_flow=cfg.clip_flow, bg_homographies=None)
        bg_info["camera_for_occluder"] = "synthetic"
    else:
        ch, cw = int(round(H * cfg.bg_canvas_scale)), int(round(W * cfg.bg_canvas_scale))
        tex, tex_info = bank.texture(rng_bg, ch, cw, cfg.p_natural_texture)
        tex = _prepare_texture(rng_bg, tex, cfg)
        static = bool(u_static < cfg.p_static_camera)
        cam_m = draw_camera_motion(rng_bg, cfg, static=static)
        cam = fit_camera(cam_m, cfg, (ch, cw))
        grid = pixel_grid(H, W)
        bg_rgb = np.empty((T, H, W, 3), np.uint8)
        for t in range(T):
            g = apply_h(np.linalg.inv(cam[t]), grid).astype(np.float32)
            bg_rgb[t] = cv2.remap(tex, g[..., 0], g[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        bg_fwd, bg_bwd = _homography_flows(cam, H, W)
        bg_info = {"texture": tex_info, "canvas_hw": [ch, cw], "static_camera": static, "camera_k": cam_m.k}
        meta.update(background="homography", bg_flow="exact", bg_homographies=np.stack(cam))
    meta["background_info"] = bg_info
    bg_exact = meta["bg_flow"] == "exact"

    # ---------------------------------------------------------------- objects
    layers: list[Layer] = []
    obj_meta = []
    for o in range(n_obj):
        rng = rng_obj[o]
        sp = _object_sprite(rng, cfg, bank, use_sil)
        m = draw_object_motion(rng, cfg, sp.radius, sp.handles, use_tps)
        hs, tps, finfo = _fit_object_motion(m, sp, cfg)
        layers.append(_make_layer(sp, hs, tps))
        obj_meta.append({"sprite": sp.kind, **sp.info, "radius": sp.radius, "depth_rank": int(order[o]),
                         "tps": any(w is not None for w in tps), "n_handles": int(len(sp.handles)), **finfo})

    stationary = np.zeros((T, n_obj), bool)
    meta["stationary"] = None
    if want_stationary and meta["background"] == "homography" and n_obj > 0:
        o = int(rng_stat.integers(n_obj))
        lo, hi = min(cfg.stationary_len[0], T - 1), min(cfg.stationary_len[1], T - 1)
        length = int(rng_stat.integers(lo, hi + 1))
        t1 = int(rng_stat.integers(0, T - length))
        lay = layers[o]
        hs, tps = glue_to_camera(lay.hs, lay.tps, cam, t1, length)
        layers[o] = _make_layer(lay.sprite, hs, tps)
        stationary[t1:t1 + length, o] = True
        meta["stationary"] = {"object": o, "start": t1, "length": length}

    occ_layer = None
    meta["occluder"] = None
    if want_occluder and n_obj > 0:
        occ_layer, meta["occluder"] = _occluder(rng_occ, cfg, bank, cam, layers)
    meta["objects"] = obj_meta

    # ---------------------------------------------------------------- compose back to front
    rgb = bg_rgb.copy()
    flow_fwd = bg_fwd.copy()
    flow_bwd = bg_bwd.copy()
    exact = np.full((T, H, W), bg_exact)
    amodal = np.zeros((T, n_obj, H, W), bool)
    layer_id = np.zeros((T, H, W), np.uint8)
    back_to_front = [int(o) for o in np.argsort(-order, kind="stable")]
    stack = [(o + 1, layers[o]) for o in back_to_front]
    if occ_layer is not None:
        stack.append((n_obj + 1, occ_layer))
    occluder = np.zeros((T, H, W), bool)
    newton = {"points": 0, "failed": 0}
    for t in range(T):
        for lid, lay in stack:
            r = _render_layer_frame(lay, t, H, W, need_fwd=t + 1 < T, need_bwd=t > 0)
            if r is None:
                continue
            y0, x0, am, col, fwd, bwd, st = r
            newton["points"] += st["newton_points"]
            newton["failed"] += st["newton_failed"]
            hh, ww = am.shape
            ys, xs = np.nonzero(am)
            ys, xs = ys + y0, xs + x0
            rgb[t, ys, xs] = col[am]
            if fwd is not None:
                flow_fwd[t, :, ys, xs] = fwd.T.astype(np.float32)
            if bwd is not None:
                flow_bwd[t, :, ys, xs] = bwd.T.astype(np.float32)
            exact[t, ys, xs] = True
            layer_id[t, ys, xs] = lid
            if lid <= n_obj:
                amodal[t, lid - 1, y0:y0 + hh, x0:x0 + ww] = am
            else:
                occluder[t, y0:y0 + hh, x0:x0 + ww] = am
    # sequence ends: the missing direction is the negated opposite flow
    flow_fwd[T - 1] = -flow_bwd[T - 1]
    flow_bwd[0] = -flow_fwd[0]

    modal = np.stack([layer_id == o + 1 for o in range(n_obj)], axis=1) if n_obj else np.zeros((T, 0, H, W), bool)
    labels = np.where(layer_id > n_obj, 0, layer_id).astype(np.uint8)
    meta["newton"] = newton
    meta["modal_area"] = modal.sum((0, 2, 3)).tolist()
    meta["amodal_area"] = amodal.sum((0, 2, 3)).tolist()
    return {"rgb": rgb, "flow_fwd": flow_fwd, "flow_bwd": flow_bwd, "amodal": amodal, "modal": modal,
            "order": order.astype(np.int64), "labels": labels, "stationary": stationary, "occluder": occluder,
            "flow_exact": exact, "meta": meta}
