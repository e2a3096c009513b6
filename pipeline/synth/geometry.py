"""Homographies and thin-plate splines used to move the layers.

Coordinates are (x, y) pixel positions with pixel centres on integers, the
convention of ``cv2.remap``. Homographies are 3x3 float64 matrices acting on
column vectors (x, y, 1).
"""

from __future__ import annotations

import numpy as np

FAR = 1.0e5  # where points that have no valid image are sent


# ----------------------------------------------------------------------------- homographies
def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def similarity(angle_deg: float, scale: float, aspect: float = 1.0) -> np.ndarray:
    """Rotation by ``angle_deg`` after an anisotropic scale (scale*aspect, scale/aspect)."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    sc = np.diag([scale * aspect, scale / aspect, 1.0])
    return rot @ sc


def perspective(px: float, py: float, radius: float) -> np.ndarray:
    """Pure perspective term; (px, py) are relative to ``radius`` (the object size)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [px / radius, py / radius, 1.0]])


def apply_h(hm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography ``hm`` to points ``pts[..., 2]``; points mapped through
    (or behind) the line at infinity are sent to ``FAR``."""
    pts = np.asarray(pts, dtype=np.float64)
    x, y = pts[..., 0], pts[..., 1]
    d = hm[2, 0] * x + hm[2, 1] * y + hm[2, 2]
    ok = d > 1e-6
    d = np.where(ok, d, 1.0)
    out = np.stack([(hm[0, 0] * x + hm[0, 1] * y + hm[0, 2]) / d,
                    (hm[1, 0] * x + hm[1, 1] * y + hm[1, 2]) / d], axis=-1)
    if not ok.all():
        out[~ok] = FAR
    return out


def pixel_grid(h: int, w: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    """Pixel centres of an h x w window whose top-left pixel is (x0, y0): [h, w, 2]."""
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w]
    return np.stack([xs, ys], axis=-1).astype(np.float64)


# ----------------------------------------------------------------------------- thin-plate splines
def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 written in terms of d2 = r^2 (0 at r = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = d2 * np.log(d2)
    return np.where(d2 > 0, k, 0.0)


class TPS:
    """Interpolating thin-plate spline R^2 -> R^2 with ``f(src[i]) = dst[i]``.

    ``f(q) = a0 + A q + sum_i w_i U(|q - src_i|)`` with the usual side conditions
    (sum w_i = 0, sum w_i src_i = 0). With three handles it is affine.
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray):
        src = np.asarray(src, dtype=np.float64)
        dst = np.asarray(dst, dtype=np.float64)
        k = len(src)
        if k < 3 or src.shape != dst.shape:
            raise ValueError("TPS needs >= 3 matching control points")
        # Work in coordinates centred on the handles and scaled to ~1 for conditioning.
        self.center = src.mean(axis=0)
        self.scale = float(np.sqrt(((src - self.center) ** 2).sum(axis=1).mean())) or 1.0
        s = (src - self.center) / self.scale
        d = (dst - self.center) / self.scale
        d2 = ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)
        mat = np.zeros((k + 3, k + 3))
        mat[:k, :k] = _tps_kernel(d2)
        mat[:k, k] = 1.0
        mat[:k, k + 1:] = s
        mat[k, :k] = 1.0
        mat[k + 1:, :k] = s.T
        rhs = np.zeros((k + 3, 2))
        rhs[:k] = d
        sol = np.linalg.solve(mat, rhs)
        self.src_n = s
        self.w = sol[:k]          # [k, 2]
        self.a0 = sol[k]          # [2]
        self.a = sol[k + 1:]      # [2(in), 2(out)]

    def _diff(self, q: np.ndarray):
        dx = q[:, 0:1] - self.src_n[:, 0]
        dy = q[:, 1:2] - self.src_n[:, 1]
        return dx, dy, dx * dx + dy * dy

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        q = (np.asarray(pts, dtype=np.float64) - self.center) / self.scale
        shp = q.shape
        q = q.reshape(-1, 2)
        _, _, d2 = self._diff(q)
        out = self.a0 + q @ self.a + _tps_kernel(d2) @ self.w
        return (out * self.scale + self.center).reshape(shp)

    def jacobian(self, pts: np.ndarray) -> np.ndarray:
        """d f / d q at ``pts[..., 2]`` -> [..., 2(out), 2(in)] (scale-free)."""
        q = (np.asarray(pts, dtype=np.float64) - self.center) / self.scale
        shp = q.shape[:-1]
        q = q.reshape(-1, 2)
        dx, dy, d2 = self._diff(q)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(d2 > 0, 2.0 * (np.log(d2) + 1.0), 0.0)   # grad U = g * (q - src)
        # J[n, out, in] = a[in, out] + sum_k w[k, out] * g[n, k] * diff[n, k, in]
        jx = (g * dx) @ self.w   # [n, out]  derivative wrt x
        jy = (g * dy) @ self.w
        jac = np.empty((len(q), 2, 2))
        jac[:, :, 0] = self.a[0] + jx
        jac[:, :, 1] = self.a[1] + jy
        return jac.reshape(*shp, 2, 2)

    def inverse(self, pts: np.ndarray, init: np.ndarray | None = None, iters: int = 6,
                tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``f(q) = pts`` by Newton's method.

        ``init`` is the starting guess (e.g. a TPS fitted in the inverse
        direction); returns ``(q, converged)`` where points that did not reach a
        residual below ``tol`` px are flagged ``False``.
        """
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        q = p.copy() if init is None else np.asarray(init, dtype=np.float64).reshape(-1, 2).copy()
        active = np.ones(len(p), dtype=bool)
        for _ in range(iters):
            idx = np.nonzero(active)[0]
            if idx.size == 0:
                break
            qa = q[idx]
            r = self(qa) - p[idx]
            done = (r ** 2).sum(-1) < (0.1 * tol) ** 2
            active[idx[done]] = False
            idx, qa, r = idx[~done], qa[~done], r[~done]
            if idx.size == 0:
                break
            j = self.jacobian(qa)
            det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
            det = np.where(np.abs(det) < 1e-9, 1e-9, det)
            dx = (j[:, 1, 1] * r[:, 0] - j[:, 0, 1] * r[:, 1]) / det
            dy = (-j[:, 1, 0] * r[:, 0] + j[:, 0, 0] * r[:, 1]) / det
            step = np.stack([dx, dy], -1)
            # damp huge steps (far from the handles the map is nearly affine anyway)
            n = np.sqrt((step ** 2).sum(-1, keepdims=True))
            step = np.where(n > 50.0, step * (50.0 / np.maximum(n, 1e-12)), step)
            q[idx] = qa - step
        res = np.sqrt(((self(q) - p) ** 2).sum(-1))
        ok = res < tol
        return q.reshape(np.shape(pts)), ok.reshape(np.shape(pts)[:-1])
