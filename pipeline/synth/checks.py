"""Consistency checks of a rendered video (used by the tests and the benchmark)."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth.geometry import apply_h, pixel_grid


def layer_map(video: dict) -> np.ndarray:
    """Visible layer per pixel [T, H, W]: 0 background, 1..O objects, O+1 occluder."""
    n = video["amodal"].shape[1]
    lm = video["labels"].astype(np.int16)
    return np.where(video["occluder"], n + 1, lm)


def warp_error(video: dict, direction: str = "fwd", flow: np.ndarray | None = None) -> dict:
    """Photometric check of the GT flow.

    For every frame t (and its neighbour t' = t+1 for ``fwd``, t-1 for ``bwd``),
    frame t' is sampled at p + flow_t(p) (bilinear) and compared with frame t.
    Valid pixels: exact flow at p, target inside the image, and the four pixels
    around the target all show the same layer as p in t' (so the point is not
    occluded there and bilinear sampling does not mix layers).
    Returns the mean absolute error (0-255 scale, over valid pixels and
    channels), the fraction of valid pixels, and the error restricted to
    object pixels (objects are small, so the overall mean is dominated by the
    background). ``flow`` overrides the stored
    flow (to test that the check detects wrong flow).
    """
    rgb = video["rgb"].astype(np.float32)
    lm = layer_map(video)
    exact = video["flow_exact"]
    flow = video["flow_fwd" if direction == "fwd" else "flow_bwd"] if flow is None else flow
    t_total, h, w = lm.shape
    grid = pixel_grid(h, w).astype(np.float32)
    pairs = [(t, t + 1) for t in range(t_total - 1)] if direction == "fwd" else [(t, t - 1) for t in range(1, t_total)]
    err_sum, n_valid, n_total = 0.0, 0, 0
    obj_sum, n_obj = 0.0, 0
    n_layers = video["amodal"].shape[1]
    for t, s in pairs:
        q = grid + np.moveaxis(flow[t], 0, -1)
        qx, qy = q[..., 0], q[..., 1]
        inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
        x0 = np.clip(np.floor(qx), 0, w - 1).astype(np.int64)
        y0 = np.clip(np.floor(qy), 0, h - 1).astype(np.int64)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        same = lm[t]
        ok = inside & exact[t]
        for yy, xx in ((y0, x0), (y0, x1), (y1, x0), (y1, x1)):
            ok &= lm[s][yy, xx] == same
        warped = cv2.remap(rgb[s], qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diff = np.abs(warped - rgb[t]).mean(-1)
        err_sum += float(diff[ok].sum())
        n_valid += int(ok.sum())
        n_total += h * w
        ok_obj = ok & (same >= 1) & (same <= n_layers)
        obj_sum += float(diff[ok_obj].sum())
        n_obj += int(ok_obj.sum())
    return {"mean_error": err_sum / max(n_valid, 1), "valid_fraction": n_valid / max(n_total, 1),
            "mean_error_objects": obj_sum / max(n_obj, 1), "valid_object_pixels": n_obj}


def composition_check(video: dict) -> dict:
    """Modal within amodal, and modal / labels recomposed from amodal + order + occluder."""
    amodal, modal, order = video["amodal"], video["modal"], video["order"]
    t_total, n, h, w = amodal.shape
    inside = bool(np.all(~modal | amodal))
    lm = np.zeros((t_total, h, w), np.int16)
    for o in np.argsort(-order, kind="stable"):  # back to front
        lm[amodal[:, o]] = o + 1
    lm[video["occluder"]] = n + 1
    modal_rec = np.stack([lm == o + 1 for o in range(n)], 1) if n else np.zeros_like(modal)
    labels_rec = np.where(lm > n, 0, lm).astype(np.uint8)
    return {"modal_in_amodal": inside, "modal_recomposed": bool(np.array_equal(modal_rec, modal)),
            "labels_recomposed": bool(np.array_equal(labels_rec, video["labels"])),
            "labels_match_modal": bool(all(np.array_equal(video["labels"] == o + 1, modal[:, o]) for o in range(n)))}


def stationary_check(video: dict, tol: float = 1e-3) -> dict:
    """In still frames, the object's forward flow equals the background
    homography's flow at its visible pixels (max abs difference <= tol px)."""
    st = video["stationary"]
    hs = video["meta"].get("bg_homographies")
    if not st.any():
        return {"stationary_frames": 0, "stationary_ok": None, "stationary_max_err": 0.0}
    if hs is None:
        return {"stationary_frames": int(st.sum()), "stationary_ok": False, "stationary_max_err": float("inf")}
    t_total, _, h, w = video["flow_fwd"].shape
    grid = pixel_grid(h, w)
    worst = 0.0
    for t, o in zip(*np.nonzero(st)):
        if t + 1 >= t_total:
            continue
        sel = video["modal"][t, o]
        if not sel.any():
            continue
        bg = apply_h(hs[t + 1] @ np.linalg.inv(hs[t]), grid[sel]) - grid[sel]
        err = np.abs(video["flow_fwd"][t][:, sel].T - bg).max()
        worst = max(worst, float(err))
    return {"stationary_frames": int(st.sum()), "stationary_ok": worst <= tol, "stationary_max_err": worst}


def check_video(video: dict) -> dict:
    """All checks: photometric warp (both directions), composition, stationarity."""
    out = {}
    for d in ("fwd", "bwd"):
        r = warp_error(video, d)
        out[f"photometric_{d}"] = r["mean_error"]
        out[f"valid_fraction_{d}"] = r["valid_fraction"]
        out[f"photometric_objects_{d}"] = r["mean_error_objects"]
    out.update(composition_check(video))
    out.update(stationary_check(video))
    return out
