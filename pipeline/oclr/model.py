"""OCLR: object-centric layered representation from optical flow.

Flow-only proposal model of Xie et al. 2022 ("Segmenting Moving Objects via an
Object-Centric Layered Representation"): a U-Net whose bottleneck is a
transformer.  ``K`` learned object queries, broadcast over the ``T`` frames of
a clip, each own one depth layer for the whole clip; every layer predicts an
amodal (full-extent) mask per frame and one depth score per clip.  Modal
(visible) masks follow by compositing the layers front to back (paper eq. 2).

Data flow for an input ``flow`` of shape ``[B, T, 4, H, W]``::

    frames [B*T, 4, H, W]  --U-Net encoder (IN after every conv)-->  skips + bottleneck [B*T, Cb, h, w]
    tokens [B*T, h*w, d]   (+ learned spatial and temporal embeddings)
    transformer encoder    per frame (same-frame attention mask) or over all T*h*w tokens
    queries [B, T*K, d]    = object embedding[k] + time embedding[t]
    transformer decoder    self-attention over all T*K queries, cross-attention of the
                           K queries of frame t to the tokens of frame t only
    last cross-attention weights [B*T, K*heads, h, w] --1x1 conv--> [B*T, Cb, h, w]
    U-Net decoder (skips)  --> amodal logits [B, T, K, H, W]
    decoder queries [B, T, K, d] --max over T--> MLP --> order logits [B, K]

Conventions
-----------
* Input channels: ``u_fwd, v_fwd, u_bwd, v_bwd`` (forward flow t->t+1, backward
  flow t->t-1), raw pixels of the working resolution, no magnitude
  normalisation (:func:`make_flow_input` builds it from ``flow_fwd`` /
  ``flow_bwd`` arrays).  ``H`` and ``W`` must be divisible by ``2**num_pools``.
* ``order_logits``: **higher = nearer the front**.  (The paper's depth value is
  the opposite, lowest = top layer; ours is its negation.)  Sorting the scores
  in descending order gives the layers front to back; GT ``order`` ranks of the
  synthetic data (0 = front-most) correspond to descending scores.
* ``modal_probs``: hard, sorted composition by default (``composition="hard"``):
  the layers are sorted by their order scores and each layer's modal
  probability is its amodal probability times the product of ``1 - amodal``
  of all layers in front.  It is differentiable w.r.t. the amodal
  probabilities but not w.r.t. the order scores (those are trained by the
  order loss).  ``composition="soft"`` replaces "layer j is in front of
  layer i" by ``sigmoid((s_j - s_i) / soft_tau)``, which makes the modal masks
  differentiable w.r.t. the scores too and tends to the hard version as
  ``soft_tau -> 0``.
* Frames: any ``T`` from 1 to ``max_frames``; beyond that a ``ValueError`` is
  raised.  Time embeddings are learned per index, so rows beyond the clip
  length used in training are untrained: run long videos in windows of the
  training length.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoint import (
    decode_state,
    export_info,
    read_export,
)
from pipeline.core.device import resolve_device

__all__ = ["OCLRConfig", "OCLR", "compose_modal", "make_flow_input", "order_to_ranks"]


# --------------------------------------------------------------------------- config
@dataclass
class OCLRConfig:
    """Every architectural knob of :class:`OCLR`.  Use :meth:`paper` or :meth:`cpu`."""

    in_channels: int = 4
    """Input channels per frame: u_fwd, v_fwd, u_bwd, v_bwd."""
    num_queries: int = 3
    """K, the number of object queries = depth layers = output masks per frame."""
    base_channels: int = 32
    """Width of the first U-Net level; level i has ``base_channels * 2**i`` channels."""
    num_pools: int = 4
    """Number of 2x2 max-pools of the U-Net encoder (bottleneck at H/2**n x W/2**n)."""
    bottleneck_channels: int | None = None
    """Channels of the bottleneck conv block and of the U-Net decoder input;
    ``None`` = ``base_channels * 2**num_pools`` (512 for the paper)."""
    instance_norm_affine: bool = True
    """Learnable scale/shift in the InstanceNorm layers (one after every conv)."""
    d_model: int | None = None
    """Transformer width; ``None`` = ``bottleneck_channels`` (no projection)."""
    num_heads: int = 8
    """Attention heads in every transformer layer; also the number of cross-attention
    maps per query fed to the U-Net decoder (K * num_heads channels)."""
    ffn_dim: int = 512
    """Hidden width of the transformer feed-forward blocks."""
    enc_layers: int = 3
    """Transformer encoder layers."""
    dec_layers: int = 3
    """Transformer decoder layers (the maps come from the last one's cross-attention)."""
    dropout: float = 0.0
    """Dropout in attention weights and feed-forward blocks (the paper does not state it)."""
    norm_first: bool = True
    """Pre-LayerNorm transformer layers (more stable from scratch) instead of post-norm."""
    encoder_attention: str = "frame"
    """``"frame"``: encoder tokens attend only to tokens of their own frame (the
    same-frame attention mask of the reference code; computed as per-frame
    batched attention, which is mathematically identical and much cheaper);
    ``"full"``: attention over all T*h*w tokens."""
    max_frames: int = 128
    """Rows of the learned time embedding = the largest T accepted."""
    bottleneck_hw: tuple[int, int] = (8, 14)
    """Size of the learned spatial embedding (bottleneck of a 128 x 224 input); it is
    resized bilinearly for other input sizes."""
    attn_map_scale: bool = True
    """Multiply the cross-attention weights by the number of keys (h*w) before the
    24 -> 512 linear so that a uniform map is 1 rather than 1/(h*w)."""
    order_hidden: int | None = None
    """Hidden width of the two-layer order MLP; ``None`` = ``d_model``."""
    composition: str = "hard"
    """How ``modal_probs`` are composed: ``"hard"`` (sorted, paper eq. 2) or ``"soft"``."""
    soft_tau: float = 1.0
    """Temperature of the soft composition (only for ``composition="soft"``)."""
    input_scale: float = 1.0
    """Fixed factor applied to the raw flow (pixels) at the model input.  The first
    conv is followed by InstanceNorm, which makes the network insensitive to it
    up to the norm's epsilon; kept at 1 (no normalisation, as in the paper)."""

    # ----------------------------------------------------------------- presets
    @classmethod
    def paper(cls, **overrides: Any) -> "OCLRConfig":
        """The published size (about 20.7M parameters): U-Net 32/64/128/256 with a
        512-channel bottleneck, transformer d 512, 8 heads, FFN 512, 3+3 layers, K 3."""
        base = cls(base_channels=32, num_pools=4, bottleneck_channels=None, d_model=None, num_heads=8, ffn_dim=512,
                   enc_layers=3, dec_layers=3, dropout=0.1)
        return replace(base, **overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> "OCLRConfig":
        """A small variant that trains on a CPU (about 2.0M parameters): U-Net 16/32/64/128
        with a 128-channel bottleneck, transformer d 128, 4 heads, FFN 256, 2+2 layers."""
        base = cls(base_channels=16, num_pools=4, bottleneck_channels=128, d_model=128, num_heads=4, ffn_dim=256,
                   enc_layers=2, dec_layers=2, dropout=0.0)
        return replace(base, **overrides)

    # ----------------------------------------------------------------- helpers
    @property
    def widths(self) -> list[int]:
        """Channel width of every U-Net level above the bottleneck."""
        return [self.base_channels * 2 ** i for i in range(self.num_pools)]

    @property
    def bottleneck(self) -> int:
        return self.bottleneck_channels or self.base_channels * 2 ** self.num_pools

    @property
    def width(self) -> int:
        """The transformer width d."""
        return self.d_model or self.bottleneck

    def validate(self) -> "OCLRConfig":
        if self.width % self.num_heads:
            raise ValueError(f"d_model {self.width} is not divisible by num_heads {self.num_heads}")
        if self.encoder_attention not in ("frame", "full"):
            raise ValueError(f"encoder_attention must be 'frame' or 'full', got {self.encoder_attention!r}")
        if self.composition not in ("hard", "soft"):
            raise ValueError(f"composition must be 'hard' or 'soft', got {self.composition!r}")
        if min(self.num_queries, self.num_pools, self.max_frames, self.dec_layers) < 1 or self.enc_layers < 0:
            raise ValueError("num_queries, num_pools, max_frames and dec_layers must be >= 1, enc_layers >= 0")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bottleneck_hw"] = list(self.bottleneck_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OCLRConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown OCLRConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "bottleneck_hw" in d:
            d["bottleneck_hw"] = tuple(d["bottleneck_hw"])
        return cls(**d).validate()


# --------------------------------------------------------------------------- composition
def order_to_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Depth ranks (0 = front-most) from order scores (higher = nearer the front).

    Ties keep the layer index order (stable sort)."""
    perm = torch.argsort(-scores, dim=-1, stable=True)
    return torch.argsort(perm, dim=-1, stable=True)


def compose_modal(amodal: torch.Tensor, order: torch.Tensor, kind: str = "score",
                  soft_tau: float | None = None) -> torch.Tensor:
    """Modal masks from amodal masks by front-to-back composition (OCLR eq. 2).

    ``modal_i = amodal_i * prod_{j in front of i} (1 - amodal_j)``

    Args:
        amodal: amodal probabilities (or binary masks) ``[..., K, H, W]``.
        order: ``[..., K]`` broadcastable against ``amodal.shape[:-2]`` (e.g.
            ``[B, 1, K]`` for ``[B, T, K, H, W]``, or ``[K]``).  With
            ``kind="score"``: scores, higher = nearer the front; with
            ``kind="rank"``: depth ranks, 0 = front-most (the synthetic GT
            ``order``).  Ties are broken by layer index (lower index in front).
        soft_tau: ``None`` for the hard (sorted) composition, differentiable only
            w.r.t. ``amodal``; a positive temperature (``kind="score"`` only) for
            the soft composition where "j in front of i" is
            ``sigmoid((s_j - s_i) / soft_tau)``.

    Returns:
        modal masks with the shape and (floating) dtype of ``amodal``; binary
        input gives binary output with every overlap assigned to the front layer.
    """
    if kind not in ("score", "rank"):
        raise ValueError(f"kind must be 'score' or 'rank', got {kind!r}")
    if amodal.dim() < 3:
        raise ValueError(f"amodal must be [..., K, H, W], got shape {tuple(amodal.shape)}")
    a = amodal if amodal.is_floating_point() else amodal.float()
    lead = a.shape[:-2]
    if order.shape[-1] != lead[-1]:
        raise ValueError(f"order has {order.shape[-1]} layers, amodal has {lead[-1]}")
    try:
        if torch.broadcast_shapes(order.shape, lead) != lead:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"order shape {tuple(order.shape)} does not broadcast to amodal.shape[:-2] "
                         f"{tuple(lead)}; insert singleton dims (e.g. order[:, None] for [B, T, K, H, W])") from None
    order = order.to(a.device)

    if soft_tau is not None:
        if kind != "score":
            raise ValueError("the soft composition needs order scores (kind='score')")
        s = order.to(a.dtype)
        # front[..., i, j] = P(layer j is in front of layer i)
        front = torch.sigmoid((s[..., None, :] - s[..., :, None]) / soft_tau)
        eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
        front = front.masked_fill(eye, 0.0)
        occl = 1.0 - front[..., :, :, None, None] * a.unsqueeze(-4)  # [..., K(i), K(j), H, W]
        return a * occl.prod(dim=-3)

    key = -order if kind == "score" else order
    perm = torch.argsort(key, dim=-1, stable=True)          # perm[r] = layer at depth rank r
    inv = torch.argsort(perm, dim=-1, stable=True)          # inv[k]  = depth rank of layer k
    H, W = a.shape[-2:]
    perm = perm.expand(lead)[..., None, None].expand(a.shape)
    inv = inv.expand(lead)[..., None, None].expand(a.shape)
    a_sorted = torch.gather(a, -3, perm)                    # front to back
    clear = torch.cumprod(1.0 - a_sorted, dim=-3)           # transmittance behind each layer
    clear = torch.cat([torch.ones_like(clear[..., :1, :, :]), clear[..., :-1, :, :]], dim=-3)
    return torch.gather(a_sorted * clear, -3, inv)


def make_flow_input(flow_fwd, flow_bwd) -> torch.Tensor:
    """Stack forward and backward flow ``[..., T, 2, H, W]`` into the model input
    ``[..., T, 4, H, W]`` (u_fwd, v_fwd, u_bwd, v_bwd) as float32."""
    f = torch.as_tensor(flow_fwd, dtype=torch.float32)
    b = torch.as_tensor(flow_bwd, dtype=torch.float32)
    if f.shape != b.shape or f.shape[-3] != 2:
        raise ValueError(f"expected two [..., 2, H, W] flows of equal shape, got {tuple(f.shape)} and {tuple(b.shape)}")
    return torch.cat([f, b], dim=-3)


# --------------------------------------------------------------------------- building blocks
def _norm(c: int, affine: bool) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=affine)


class ConvBlock(nn.Sequential):
    """(3x3 conv -> InstanceNorm -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int, affine: bool):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), _norm(cout, affine), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), _norm(cout, affine), nn.ReLU(inplace=True))


class Up(nn.Module):
    """2x2 stride-2 transposed conv (+IN, ReLU), concatenation with the skip, ConvBlock."""

    def __init__(self, cin: int, cout: int, affine: bool):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), _norm(cout, affine), nn.ReLU(inplace=True))
        self.conv = ConvBlock(2 * cout, cout, affine)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Attention(nn.Module):
    """Multi-head attention that can also return its (per-head) weights."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mem: torch.Tensor, need_weights: bool = False):
        n, lq, d = x.shape
        lk = mem.shape[1]
        q = self.q(x).view(n, lq, self.h, self.dh).transpose(1, 2)
        k = self.k(mem).view(n, lk, self.h, self.dh).transpose(1, 2)
        v = self.v(mem).view(n, lk, self.h, self.dh).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if need_weights:
            w = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh)), dim=-1)
            out = F.dropout(w, p, self.training) @ v
        else:
            w = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = self.o(out.transpose(1, 2).reshape(n, lq, d))
        return out, w


class FFN(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, d),
                         nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: OCLRConfig):
        super().__init__()
        d = cfg.width
        self.pre = cfg.norm_first
        self.attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.ffn = FFN(d, cfg.ffn_dim, cfg.dropout)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            h = self.n1(x)
            x = x + self.drop(self.attn(h, h)[0])
            return x + self.ffn(self.n2(x))
        x = self.n1(x + self.drop(self.attn(x, x)[0]))
        return self.n2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    """Self-attention over all T*K queries, then per-frame cross-attention, then FFN."""

    def __init__(self, cfg: OCLRConfig):
        super().__init__()
        d = cfg.width
        self.pre = cfg.norm_first
        self.self_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.ffn = FFN(d, cfg.ffn_dim, cfg.dropout)
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, q: torch.Tensor, mem: torch.Tensor, T: int, need_weights: bool = False):
        # q [B, T*K, d] (frame-major), mem [B*T, hw, d]
        B, TK, d = q.shape
        K = TK // T
        h = self.n1(q) if self.pre else q
        q = q + self.drop(self.self_attn(h, h)[0])
        if not self.pre:
            q = self.n1(q)
        h = (self.n2(q) if self.pre else q).reshape(B * T, K, d)
        out, w = self.cross_attn(h, mem, need_weights)
        q = q + self.drop(out.reshape(B, TK, d))
        if not self.pre:
            q = self.n2(q)
        q = q + self.ffn(self.n3(q) if self.pre else q)
        if not self.pre:
            q = self.n3(q)
        return q, w


# --------------------------------------------------------------------------- model
class OCLR(nn.Module):
    """The OCLR flow-only layered segmentation model (see the module docstring).

    ``forward(flow [B, T, 4, H, W])`` returns a dict:

    * ``amodal_logits`` ``[B, T, K, H, W]``: per-layer amodal mask logits.
    * ``order_logits`` ``[B, K]``: depth scores, higher = nearer the front.
    * ``modal_probs`` ``[B, T, K, H, W]``: composed modal probabilities (float32).
    """

    def __init__(self, cfg: OCLRConfig | None = None):
        super().__init__()
        self.cfg = cfg = (cfg or OCLRConfig.paper()).validate()
        aff = cfg.instance_norm_affine
        widths, cb, d, K = cfg.widths, cfg.bottleneck, cfg.width, cfg.num_queries
        # U-Net encoder
        self.enc = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.enc.append(ConvBlock(cin, w, aff))
            cin = w
        self.bottleneck = ConvBlock(cin, cb, aff)
        # transformer bottleneck
        self.in_proj = nn.Linear(cb, d) if d != cb else nn.Identity()
        bh, bw = cfg.bottleneck_hw
        self.pos_space = nn.Parameter(torch.randn(d, bh, bw) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.query = nn.Parameter(torch.randn(K, d))
        self.query_time = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.map_proj = nn.Conv2d(K * cfg.num_heads, cb, 1)           # "linear 24 -> 512"
        # U-Net decoder
        self.up = nn.ModuleList()
        cin = cb
        for w in reversed(widths):
            self.up.append(Up(cin, w, aff))
            cin = w
        self.head = nn.Conv2d(widths[0], K, 3, padding=1)
        # depth-order head: max over time -> two feed-forward layers -> one scalar per layer
        oh = cfg.order_hidden or d
        self.order_head = nn.Sequential(nn.Linear(d, oh), nn.ReLU(inplace=True), nn.Linear(oh, 1))

    # ----------------------------------------------------------------- utils
    def param_count(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _spatial_pos(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_space
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return pos.flatten(1).transpose(0, 1)  # [h*w, d]

    # ----------------------------------------------------------------- forward
    def forward(self, flow: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if flow.dim() != 5 or flow.shape[2] != cfg.in_channels:
            raise ValueError(f"expected flow [B, T, {cfg.in_channels}, H, W], got {tuple(flow.shape)}")
        B, T, _, H, W = flow.shape
        if T > cfg.max_frames:
            raise ValueError(f"clip of {T} frames exceeds max_frames={cfg.max_frames}; run it in windows")
        div = 2 ** cfg.num_pools
        if H % div or W % div:
            raise ValueError(f"H and W must be divisible by {div}, got {H} x {W}")
        K, nh = cfg.num_queries, cfg.num_heads

        x = flow.reshape(B * T, cfg.in_channels, H, W)
        if cfg.input_scale != 1.0:
            x = x * cfg.input_scale
        skips = []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)                                   # [B*T, Cb, h, w]
        h, w = x.shape[-2:]

        tok = self.in_proj(x.flatten(2).transpose(1, 2))         # [B*T, hw, d]
        d = tok.shape[-1]
        tok = tok + self._spatial_pos(h, w).to(tok.dtype)
        tok = (tok.view(B, T, h * w, d) + self.pos_time[:T, None, :].to(tok.dtype)).view(B * T, h * w, d)
        if cfg.encoder_attention == "full":
            tok = tok.reshape(B, T * h * w, d)
        for layer in self.encoder:
            tok = layer(tok)
        mem = self.enc_norm(tok).reshape(B * T, h * w, d)

        q = (self.query[None, :, :] + self.query_time[:T, None, :]).reshape(1, T * K, d)
        q = q.expand(B, T * K, d).to(mem.dtype)
        attn = None
        for i, layer in enumerate(self.decoder):
            q, attn = layer(q, mem, T, need_weights=i == len(self.decoder) - 1)
        q = self.dec_norm(q).reshape(B, T, K, d)

        # attn [B*T, heads, K, hw] -> [B*T, K*heads, h, w] (query-major channels)
        maps = attn.transpose(1, 2).reshape(B * T, K * nh, h, w)
        if cfg.attn_map_scale:
            maps = maps * float(h * w)
        y = self.map_proj(maps.to(x.dtype))
        for up, skip in zip(self.up, reversed(skips)):
            y = up(y, skip)
        amodal_logits = self.head(y).reshape(B, T, K, H, W)

        order_logits = self.order_head(q.amax(dim=1)).squeeze(-1)  # [B, K]

        probs = torch.sigmoid(amodal_logits.float())
        tau = cfg.soft_tau if cfg.composition == "soft" else None
        modal = compose_modal(probs, order_logits.float()[:, None, :], kind="score", soft_tau=tau)
        return {"amodal_logits": amodal_logits, "order_logits": order_logits, "modal_probs": modal}


EXPORT_FORMAT = "motionseg-oclr/1"


# --------------------------------------------------------------------------- helpers
@torch.no_grad()
def modal_labels(modal_probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Label map ``[..., H, W]`` uint8 from modal probabilities ``[..., K, H, W]``:
    ``k + 1`` where layer ``k`` has the largest probability and it exceeds ``threshold``, else 0."""
    p = modal_probs.float()
    mx, arg = p.max(dim=-3)
    return torch.where(mx > threshold, arg + 1, torch.zeros_like(arg)).to(torch.uint8)


def load_oclr(path: str | os.PathLike, device: Any = "cpu") -> tuple[OCLR, dict]:
    """Load an exported checkpoint: ``(model in eval mode, fp32, on device; info)``.

    ``info``: ``model_config``, ``train`` (clip_len, size, flow_source, ...),
    ``summary``, ``encoding``, ``weights_sha256``, ``file_sha256``, ``path``.
    """
    doc = read_export(path, EXPORT_FORMAT, "OCLR", "produce it with `dvc repro training/dvc.yaml:train_oclr` (trains "
                      "on data/synth and exports it there) or point proposals.checkpoint at an existing file")
    model = OCLR(OCLRConfig.from_dict(doc["model_config"]))
    model.load_state_dict(decode_state(doc["state"]))
    dev = resolve_device(device)
    model = model.to(dev).eval()
    info = export_info(path, doc, dev)
    return model, info
