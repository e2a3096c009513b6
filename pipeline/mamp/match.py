"""Local spatio-temporal matching: windows, flow registration, TopK affinity, label transfer.

Shapes: features ``[n, c, h, w]`` on a stride-``s`` grid, labels
``[n, o, h, w]`` (soft, one channel per object, background included), flow
``[n, 2, h, w]`` in grid cells (``u`` = x, ``v`` = y; a query location
``(y, x)`` corresponds to ``(y + v, x + u)`` in the reference). A window of
radius ``r`` holds ``(2 r + 1) ** 2`` locations.

* :func:`local_windows` (training): every location's window of a map, by
  ``F.unfold``.
* :func:`register` (inference, MAMP's motion-aware step): warp reference
  features and labels to the query frame with the query -> reference flow, so
  that the same grid cell holds the best-corresponding reference content; the
  warp also returns where the reference was seen at all.
* :func:`topk_affinity` + :func:`transfer`: correlate the query with every
  location in the windows of all references, keep the ``k`` best per query
  location, softmax them, and carry the references' labels with those weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_windows", "window_valid", "register", "window_scores", "topk_weights", "topk_affinity", "transfer",
           "flow_to_grid"]

#: score of a candidate outside the grid or not seen in the reference
UNSEEN = torch.finfo(torch.float32).min / 4


def local_windows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C, (2r+1)^2, h, w]``: each location's window (zeros outside)."""
    B, C, h, w = x.shape
    k = 2 * radius + 1
    cols = F.unfold(x, kernel_size=k, padding=radius)  # [B, C*k*k, h*w]
    return cols.view(B, C, k * k, h, w)


def window_valid(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """``bool [(2r+1)^2, h, w]``: which window entries fall inside the ``h x w`` grid."""
    ones = torch.ones(1, 1, h, w, device=device)
    return local_windows(ones, radius)[0, 0] > 0.5


def flow_to_grid(flow: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel flow ``[n, 2, H, W]`` -> grid flow ``[n, 2, ceil(H/s), ceil(W/s)]``: sampled at the kernel
    centres ``(s i, s j)`` (size-aware) and divided by ``s``."""
    from pipeline.mamp.align import down

    return down(flow, stride) / float(stride)


def register(x: torch.Tensor, flow: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp reference maps ``x [n, C, h, w]`` to the query with grid flow ``[n, 2, h, w]``
    (bilinear); returns ``(warped, seen [n, h, w] bool)``. ``flow`` None: no warp, all seen."""
    n, _, h, w = x.shape
    if flow is None:
        return x, torch.ones(n, h, w, dtype=torch.bool, device=x.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[:, 0].float()) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1].float()) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    ones = torch.ones(n, 1, h, w, device=x.device, dtype=torch.float32)
    out = F.grid_sample(torch.cat([x.float(), ones], 1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    seen = out[:, -1] > 0.999
    return out[:, :-1].to(x.dtype), seen


def window_scores(fq: torch.Tensor, fr: torch.Tensor, seen: torch.Tensor, radius: int, similarity: str = "dot",
                  row_chunk: int | None = 16, col_block: int | None = None) -> torch.Tensor:
    """Similarity of query ``fq [c, h, w]`` to the window of each location in references
    ``fr [n, c, h, w]``: ``[n, 2r+1, 2r+1, h, w]``, entry ``(i, dy, dx, y, x)`` comparing query
    location ``(y, x)`` with reference ``i`` at ``(y + dy - r, x + dx - r)``; candidates outside the
    grid or not ``seen [n, h, w]`` hold a large negative number (:data:`UNSEEN`). ``similarity`` 'dot':
    <q, r>; 'l2': -|q - r|^2 up to a per-query constant. ``row_chunk``: query rows per matrix product
    (None = all); ``col_block``: query columns per product (None = the full width; see below)."""
    n, c, h, w = fr.shape
    k2 = 2 * radius + 1
    hp, wp = h + 2 * radius, w + 2 * radius
    q = fq.float()
    r = fr.float()
    if similarity == "l2":  # -|q - r|^2 up to a per-query constant = <[2q, -1], [r, |r|^2]>
        q = torch.cat([2.0 * q, -torch.ones_like(q[:1])], 0)
        r = torch.cat([r, (r * r).sum(1, keepdim=True)], 1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'dot' or 'l2', got {similarity!r}")
    c = q.shape[0]
    frp = F.pad(r, (radius, radius, radius, radius)).contiguous()   # [n, c, hp, wp]
    qrows = q.permute(1, 2, 0)                                # [h, w, c]
    scores = torch.empty(n, k2, k2, h, w, device=fr.device)
    # band products read the padded reference in place (strided views, no copies): a block of query
    # rows y0..y1 against reference rows y..y+2r; the diagonal band of each product holds the window.
    # Full width (col_block None or >= w): one product per row block with all k2 reference rows side
    # by side, [w, c] x [c, k2 * wp]; column blocks: one product per window row dy, [bw, c] x [c, bw + 2r],
    # which wastes (bw + 2r) / (2r + 1) of the products instead of (w + 2r) / (2r + 1)
    step = max(1, int(row_chunk or h))
    cb = int(col_block) if col_block else w
    sn, sc = c * hp * wp, hp * wp
    for i in range(n):
        base = frp.storage_offset() + i * sn
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            hc = y1 - y0
            if cb >= w:
                band = frp.as_strided((hc, c, k2 * wp), (wp, sc, 1), base + y0 * wp)
                m = torch.bmm(qrows[y0:y1], band)                          # [hc, w, k2 * wp]
                st = m.stride()
                diag = m.as_strided((hc, w, k2, k2), (st[0], st[1] + 1, wp, 1), m.storage_offset())
                scores[i, :, :, y0:y1] = diag.permute(2, 3, 0, 1)           # [dy, dx, hc, w]
                continue
            for x0 in range(0, w, max(1, cb)):
                x1 = min(w, x0 + max(1, cb))
                cw = x1 - x0 + 2 * radius
                qb = qrows[y0:y1, x0:x1]
                for dy in range(k2):
                    band = frp.as_strided((hc, c, cw), (wp, sc, 1), base + (y0 + dy) * wp + x0)
                    m = torch.bmm(qb, band)                                 # [hc, bw, cw]
                    st = m.stride()
                    diag = m.as_strided((hc, x1 - x0, k2), (st[0], st[1] + st[2], st[2]), m.storage_offset())
                    scores[i, dy, :, y0:y1, x0:x1] = diag.permute(2, 0, 1)  # [dx, hc, bw]
    okp = F.pad(seen.float(), (radius, radius, radius, radius))[:, None]
    ok = F.unfold(okp, kernel_size=k2).view(n, k2, k2, h, w) > 0.5
    return scores.masked_fill_(~ok, UNSEEN)


def topk_weights(scores: torch.Tensor, topk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``topk`` best of the ``n (2r+1)^2`` candidates of :func:`window_scores` per query location,
    softmax-normalised with ``temperature`` (unseen candidates weigh 0). Returns ``(weights [k, h*w],
    index [k, h*w])``, the index into the flattened padded references ``[n, h + 2r, w + 2r]`` (see
    :func:`transfer`)."""
    n, k2, _, h, w = scores.shape
    radius = (k2 - 1) // 2
    hp, wp = h + 2 * radius, w + 2 * radius
    flat = scores.reshape(n * k2 * k2, h * w)
    k = min(int(topk), flat.shape[0])
    val, idx = flat.topk(k, dim=0)                           # [k, hw]
    wts = torch.softmax(val / float(temperature), dim=0)
    wts = torch.where(val > UNSEEN / 2, wts, torch.zeros_like(wts))
    # candidate (ref, dy, dx) at query (y, x) -> padded reference location (y + dy, x + dx)
    ref, off = idx // (k2 * k2), idx % (k2 * k2)
    dy, dx = off // k2, off % k2
    pos = torch.arange(h * w, device=scores.device)
    y, x = pos // w, pos % w
    index = ref * (hp * wp) + (y[None] + dy) * wp + (x[None] + dx)
    return wts, index


def topk_affinity(fq: torch.Tensor, fr: torch.Tensor, seen: torch.Tensor, radius: int, topk: int,
                  temperature: float, similarity: str = "dot", row_chunk: int | None = 16,
                  col_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Affinity of query ``fq [c, h, w]`` to the windows of references ``fr [n, c, h, w]``: every query
    location ``(y, x)`` is compared with the ``(2r+1)^2`` locations around ``(y, x)`` in each reference
    (``seen [n, h, w]`` False = not a candidate), and the ``topk`` best of the ``n (2r+1)^2`` candidates
    are kept and softmax-normalised (:func:`window_scores`, then :func:`topk_weights`)."""
    return topk_weights(window_scores(fq, fr, seen, radius, similarity, row_chunk, col_block), topk, temperature)


def transfer(labels: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, radius: int) -> torch.Tensor:
    """Labels of the query: ``labels [n, o, h, w]`` (registered like the features) carried with
    ``weights`` / ``index`` of :func:`topk_affinity` -> ``[o, h, w]`` (renormalised over labels)."""
    n, o, h, w = labels.shape
    lp = F.pad(labels.float(), (radius, radius, radius, radius))  # [n, o, hp, wp]
    flat = lp.permute(1, 0, 2, 3).reshape(o, -1)                  # [o, n*hp*wp]
    vals = flat[:, index.reshape(-1)].view(o, *index.shape)        # [o, k, hw]
    out = (vals * weights[None]).sum(1)
    out = out / out.sum(0, keepdim=True).clamp_min(1e-6)
    return out.view(o, h, w)
