"""Smooth motion trajectories: per-frame maps from a layer's canvas to the frame.

A layer's map at frame t is ``F_t = H_t o W_t`` where ``W_t`` is an optional
thin-plate spline acting on canvas coordinates (the deformation) and ``H_t`` a
homography from the canvas to the frame. Every parameter is a smooth function
of the normalised time u = t / (T - 1); a single factor ``k`` scales all the
*changes* so a trajectory can be slowed down until it respects the speed caps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.geometry import TPS, apply_h, perspective, similarity, translation


# ----------------------------------------------------------------------------- objects
@dataclass
class ObjectMotion:
    p0: np.ndarray          # centre at t = 0 (frame px)
    p1: np.ndarray          # centre at t = T-1 before wiggle
    wiggle: float           # sideways amplitude (px)
    wiggle_cycles: float
    theta0: float           # degrees
    dtheta: float
    theta_osc: float        # amplitude of an extra rotation oscillation (degrees)
    theta_freq: float
    theta_phase: float
    log_scale: float        # log(final / initial scale)
    log_aspect0: float
    log_aspect1: float
    persp0: np.ndarray      # (px, py) relative to the sprite radius
    persp1: np.ndarray
    # TPS (None when the object is rigid up to the homography)
    handles: np.ndarray | None = None
    tps_amp: np.ndarray | None = None      # [k] max displacement per handle (0 = fixed)
    tps_dir: np.ndarray | None = None      # [k, 2, 2] rotation of each handle's ellipse
    tps_axes: np.ndarray | None = None     # [k, 2] (cos a, sin a) ellipse axes (unit norm)
    tps_freq: np.ndarray | None = None     # [k, 2] cycles per clip of the two components
    tps_phase: np.ndarray | None = None    # [k, 2]
    k: float = 1.0                         # overall motion scaling (speed cap)
    tps_k: float = 1.0                     # extra TPS amplitude scaling (fold-over guard)


def draw_object_motion(rng: np.random.Generator, cfg, radius: float, handles: np.ndarray | None,
                       use_tps: bool) -> ObjectMotion:
    h, w, t = cfg.height, cfg.width, cfg.num_frames
    margin = np.array([0.12 * w, 0.12 * h])
    lo, hi = margin, np.array([w - 1, h - 1]) - margin
    p0 = rng.uniform(lo, hi)
    # end point: a random direction at a random mean speed, kept inside the frame
    p1 = p0
    for _ in range(20):
        speed = rng.uniform(cfg.min_speed, cfg.max_speed)
        ang = rng.uniform(0, 2 * np.pi)
        cand = p0 + speed * (t - 1) * np.array([np.cos(ang), np.sin(ang)])
        if np.all(cand >= lo) and np.all(cand <= hi):
            p1 = cand
            break
    else:
        p1 = np.clip(cand, lo, hi)
    length = float(np.linalg.norm(p1 - p0))
    m = ObjectMotion(
        p0=p0, p1=p1,
        wiggle=float(rng.uniform(-1, 1) * cfg.path_wiggle * length),
        wiggle_cycles=float(rng.integers(1, 3)),
        theta0=float(rng.uniform(-180, 180)),
        dtheta=float(rng.uniform(-1, 1) * cfg.rotation_range),
        theta_osc=float(rng.uniform(0, 0.25) * cfg.rotation_range),
        theta_freq=float(rng.uniform(0.5, 2.0)),
        theta_phase=float(rng.uniform(0, 2 * np.pi)),
        log_scale=float(rng.uniform(np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1]))),
        log_aspect0=float(rng.uniform(-1, 1) * cfg.shear_range),
        log_aspect1=float(rng.uniform(-1, 1) * cfg.shear_range),
        persp0=rng.uniform(-1, 1, 2) * cfg.perspective_range,
        persp1=rng.uniform(-1, 1, 2) * cfg.perspective_range,
    )
    if use_tps and handles is not None and len(handles) >= 3:
        n = len(handles)
        d = np.sqrt(((handles[:, None] - handles[None]) ** 2).sum(-1)) + np.eye(n) * 1e9
        dmin = d.min(1)                              # D_i: distance to the nearest other handle
        moving = rng.random(n) < cfg.tps_move_prob
        if not moving.any():
            moving[rng.integers(n)] = True
        amp = np.where(moving, rng.uniform(0.3, 1.0, n) * cfg.tps_magnitude * dmin / 2, 0.0)
        beta = rng.uniform(0, 2 * np.pi, n)
        c, s = np.cos(beta), np.sin(beta)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)   # [n, 2, 2]
        alpha = rng.uniform(0, np.pi / 2, n)
        m.handles = handles.astype(np.float64)
        m.tps_amp = amp
        m.tps_dir = rot
        m.tps_axes = np.stack([np.cos(alpha), np.sin(alpha)], -1)
        m.tps_freq = rng.uniform(*cfg.tps_cycles, (n, 2))
        m.tps_phase = rng.uniform(0, 2 * np.pi, (n, 2))
    return m


def object_homography(m: ObjectMotion, u: float, center: np.ndarray, radius: float) -> np.ndarray:
    k = m.k
    d = m.p1 - m.p0
    n = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
    pos = m.p0 + k * (d * u + n * m.wiggle * np.sin(np.pi * m.wiggle_cycles * u))
    theta = m.theta0 + k * (m.dtheta * u + m.theta_osc * (np.sin(2 * np.pi * m.theta_freq * u + m.theta_phase)
                                                          - np.sin(m.theta_phase)))
    scale = np.exp(k * m.log_scale * u)
    aspect = np.exp(m.log_aspect0 + k * (m.log_aspect1 - m.log_aspect0) * u)
    pp = m.persp0 + k * (m.persp1 - m.persp0) * u
    return (translation(*pos) @ perspective(pp[0], pp[1], radius * scale)
            @ similarity(theta, scale, aspect) @ translation(-center[0], -center[1]))


def object_tps(m: ObjectMotion, u: float) -> TPS | None:
    if m.handles is None or m.tps_amp is None or m.k * m.tps_k <= 0:
        return None
    osc = np.sin(2 * np.pi * m.tps_freq * u + m.tps_phase)            # [n, 2]
    local = m.tps_axes * osc                                          # |local| <= 1
    disp = np.einsum("nij,nj->ni", m.tps_dir, local) * (m.tps_amp * m.k * m.tps_k)[:, None]
    if not np.any(disp):
        return None
    return TPS(m.handles, m.handles + disp)


def object_trajectory(m: ObjectMotion, num_frames: int, center: np.ndarray,
                      radius: float) -> tuple[list[np.ndarray], list[TPS | None]]:
    us = np.linspace(0.0, 1.0, num_frames)
    hs = [object_homography(m, u, center, radius) for u in us]
    tps = [object_tps(m, u) for u in us]
    return hs, tps


def map_points(hm: np.ndarray, tps: TPS | None, pts: np.ndarray) -> np.ndarray:
    """F_t(q) = H_t(W_t(q)) for canvas points ``pts[..., 2]``."""
    return apply_h(hm, tps(pts) if tps is not None else pts)


def max_point_speed(hs, tps, probe: np.ndarray) -> float:
    pos = np.stack([map_points(h, w, probe) for h, w in zip(hs, tps)])
    return float(np.sqrt((np.diff(pos, axis=0) ** 2).sum(-1)).max())


def min_tps_jacobian(tps: list[TPS | None], pts: np.ndarray) -> float:
    worst = np.inf
    for w in tps:
        if w is None:
            continue
        j = w.jacobian(pts)
        det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
        worst = min(worst, float(det.min()))
    return worst


# ----------------------------------------------------------------------------- camera
@dataclass
class CameraMotion:
    pan0: np.ndarray
    pan_vel: np.ndarray     # px/frame (canvas px)
    wiggle: np.ndarray      # [2] amplitude of a sinusoidal shake-free sway
    wiggle_freq: float
    dtheta: float
    log_zoom: float
    persp0: np.ndarray
    persp1: np.ndarray
    k: float = 1.0


def draw_camera_motion(rng: np.random.Generator, cfg, static: bool) -> CameraMotion:
    speed = rng.uniform(0, cfg.bg_max_speed)
    ang = rng.uniform(0, 2 * np.pi)
    cam = CameraMotion(
        pan0=rng.uniform(-1, 1, 2) * np.array([cfg.width, cfg.height]) * (cfg.bg_canvas_scale - 1) / 2,
        pan_vel=speed * np.array([np.cos(ang), np.sin(ang)]),
        wiggle=rng.uniform(-1, 1, 2) * cfg.bg_max_speed * 2,
        wiggle_freq=float(rng.uniform(0.3, 1.2)),
        dtheta=float(rng.uniform(-1, 1) * cfg.bg_rotation_range),
        log_zoom=float(rng.uniform(np.log(cfg.bg_scale_range[0]), np.log(cfg.bg_scale_range[1]))),
        persp0=rng.uniform(-1, 1, 2) * cfg.bg_perspective_range,
        persp1=rng.uniform(-1, 1, 2) * cfg.bg_perspective_range,
    )
    if static:
        cam.k = 0.0
    return cam


def camera_trajectory(cam: CameraMotion, cfg, canvas_hw: tuple[int, int]) -> list[np.ndarray]:
    """Homographies canvas -> frame for every frame (canvas centred at t = 0 up to pan0)."""
    h, w, t = cfg.height, cfg.width, cfg.num_frames
    ch, cw = canvas_hw
    fc = np.array([(w - 1) / 2, (h - 1) / 2])
    cc = np.array([(cw - 1) / 2, (ch - 1) / 2])
    half_diag = 0.5 * np.hypot(h, w)
    out = []
    k = cam.k
    for i in range(t):
        u = i / (t - 1)
        pan = k * (cam.pan0 + cam.pan_vel * i + cam.wiggle * np.sin(2 * np.pi * cam.wiggle_freq * u))
        zoom = np.exp(k * cam.log_zoom * u)
        pp = k * (cam.persp0 + (cam.persp1 - cam.persp0) * u)
        hm = (translation(*fc) @ perspective(pp[0], pp[1], half_diag) @ similarity(k * cam.dtheta * u, zoom)
              @ translation(-(cc[0] + pan[0]), -(cc[1] + pan[1])))
        out.append(hm)
    return out


def camera_fits(hs: list[np.ndarray], cfg, canvas_hw: tuple[int, int], margin: float = 1.0) -> bool:
    """True when every frame's corners map inside the canvas (so every pixel does)."""
    h, w = cfg.height, cfg.width
    ch, cw = canvas_hw
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    for hm in hs:
        c = apply_h(np.linalg.inv(hm), corners)
        if (c[:, 0].min() < margin or c[:, 1].min() < margin or c[:, 0].max() > cw - 1 - margin
                or c[:, 1].max() > ch - 1 - margin):
            return False
    return True


def fit_camera(cam: CameraMotion, cfg, canvas_hw: tuple[int, int]) -> list[np.ndarray]:
    """Shrink the camera motion until the frame stays inside the canvas."""
    for _ in range(30):
        hs = camera_trajectory(cam, cfg, canvas_hw)
        if camera_fits(hs, cfg, canvas_hw):
            return hs
        cam.k *= 0.8
    cam.k = 0.0
    return camera_trajectory(cam, cfg, canvas_hw)


def glue_to_camera(hs: list[np.ndarray], tps: list, cam: list[np.ndarray], t1: int,
                   length: int) -> tuple[list[np.ndarray], list]:
    """Make an object still relative to the background from frame t1 to t1+length.

    The object's own clock stops during the window (same canvas -> background
    map, same deformation) and resumes afterwards, offset by the camera motion
    accumulated during the window, so the trajectory stays continuous.
    Forward flow at frames t1 .. t1+length-1 then equals the background's.
    """
    n = len(hs)
    out_h, out_t = [], []
    stop = np.linalg.inv(cam[t1])
    after = cam[t1 + length] @ stop
    for t in range(n):
        if t <= t1:
            out_h.append(hs[t]); out_t.append(tps[t])
        elif t <= t1 + length:
            out_h.append(cam[t] @ stop @ hs[t1]); out_t.append(tps[t1])
        else:
            out_h.append(after @ hs[t - length]); out_t.append(tps[t - length])
    return out_h, out_t
