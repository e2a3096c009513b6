"""Object-centric mask corrector (appearance-based refinement, Xie et al. 2024, sect. 3.3, app. A.2).

Refines the flow-predicted proposal masks of ``T`` contiguous target frames with
the help of exemplar frames (frames whose proposal of an object was judged
accurate by the selector), using backbone tokens (DINO in the paper; any
``[C, h, w]`` grid here, ``C`` = :attr:`CorrectorConfig.token_dim`).

Data flow for one window (shapes without the batch axis; ``Q = K + K_bg``)::

    tokens [T, C, h, w] --LN_C, linear C->d--> target memory [T*h*w, d] (+ spatial, + time embedding)
    ex_tokens [E, C, h, w], ex_masks [E, K, h, w] (area fractions at token resolution)
        --> exemplar memory [E*h*w, d] = linear(LN_C(tokens)) + spatial embedding
                                         + sum_k ex_mask[e, k] * identity_code[k]
        --> object query k = linear( sum_e w_ek * pool_ek / sum_e w_ek ),
            pool_ek = mask-weighted mean of LN_C(tokens of e) under ex_mask[e, k];
            "empty object" vector when sum_e w_ek = 0; + slot embedding[k]
    queries [T, Q, d] = [object queries; K_bg learned background queries] + time embedding[t]
    L x (pre-norm residual blocks):
        self-attention over all T*Q queries
        slot-style cross-attention to the target memory (queries of frame t: all T frames' tokens)
        FFN
        slot-style cross-attention to the exemplar memory (never to exemplar tokens of the
            query's own absolute frame: ``ex_frame == tgt_frame``)
        FFN
    final LN --> output queries [T, Q, d]
    mask head:  per-head dot products of every output query of frame t with frame t's
                tokens -> softmax over the Q queries (background competes) -> the K object
                queries' maps [K*heads, h, w] -> 1x1 conv -> U-Net decoder with the skips of a
                CNN encoder over [RGB, K proposal masks] -> K mask logits [H, W]
                (+ s * (2 * proposal - 1), learnable s, when ``proposal_prior`` is set;
                both proposal inputs are off when ``model.proposal_inputs`` is False, as
                after self-supervised adaptation)
    aux head:   every output query, spatially broadcast (+ spatial embedding) -> MLP ->
                hidden z_q -> a C-dim feature map feat_q = W z_q + b and an alpha logit at
                token resolution; alpha = softmax over the Q queries; recon =
                sum_q alpha_q * feat_q (paper eq. 7), computed as W (sum_q alpha_q z_q) + b
                (identical, since the alphas sum to 1) so the Q C-dim maps are never built

Slot-style attention (:func:`slot_attention_weights`): the attention logits of
the ``Q`` queries of one target frame against ``N`` keys are normalised with a
softmax over the **query** axis (queries compete for every key, as in Slot
Attention), a small epsilon is added, and the result is renormalised over the
keys (each query takes a weighted mean of the values). Masked (query, key)
pairs get exactly 0 weight; a key that no query may see contributes nothing,
and a query that may see no key gets an all-zero row (zero update).

Frame indices: ``tgt_frame [B, T]`` and ``ex_frame [B, E]`` are absolute frame
numbers within the video (``-1`` = padding). Padded target frames are ignored as
keys (target cross-attention, self-attention); padded exemplar frames are
ignored everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoint import (
    decode_state,
    export_info,
    read_export,
)
from pipeline.core.device import resolve_device
from pipeline.oclr.model import FFN, ConvBlock, Up

__all__ = ["CorrectorConfig", "Corrector", "slot_attention_weights", "SlotCrossAttention", "pool_masks"]


# --------------------------------------------------------------------------- config
@dataclass
class CorrectorConfig:
    """Every architectural knob of :class:`Corrector`. Use :meth:`paper` or :meth:`cpu`."""

    num_objects: int = 3
    """K: object queries = proposal slots = output masks per frame."""
    num_bg: int = 4
    """K_bg: learned background queries."""
    token_dim: int = 384
    """C: channels of the backbone tokens (384 for DINO ViT-S; 448 for the MobileNetV2 substitute)."""
    backbone: str | None = None
    """Name of the backbone the tokens come from (informational; checked by the stage)."""
    token_hw: tuple[int, int] = (16, 28)
    """Size of the learned spatial embeddings (resized bilinearly for other token grids)."""
    d_model: int = 384
    """Transformer width d."""
    num_heads: int = 8
    """Attention heads; also the number of maps per object fed to the mask decoder."""
    num_layers: int = 3
    """Transformer layers (self-attn, target cross-attn, FFN, exemplar cross-attn, FFN)."""
    ffn_dim: int = 1024
    """Hidden width of the feed-forward blocks."""
    dropout: float = 0.0
    """Dropout in the feed-forward blocks and on the attention updates."""
    max_frames: int = 16
    """Rows of the learned time embedding = the largest window T accepted."""
    base_channels: int = 64
    """Width of the first level of the skip encoder / mask decoder (level i: base * 2**i)."""
    num_pools: int = 3
    """2x2 pools of the skip encoder; the decoder starts at H / 2**num_pools."""
    decoder_channels: int | None = None
    """Channels of the decoder input (after the 1x1 conv of the maps); None = base * 2**num_pools."""
    instance_norm_affine: bool = True
    """Learnable scale/shift in the InstanceNorm layers of the CNN encoder/decoder."""
    recon_hidden: int | None = None
    """Hidden width of the auxiliary broadcast decoder MLP; None = d_model."""
    slot_eps: float = 1e-8
    """Epsilon added to the query-softmax before the renormalisation over keys."""
    proposal_prior: float = 0.0
    """Initial value of a learnable scale ``s`` of a residual proposal prior: the mask logits are
    the decoder output plus ``s * (2 * proposal - 1)``, so an untrained model starts from the
    proposals and training learns the corrections (short CPU runs). 0 = off (the paper's head,
    no extra parameter)."""

    # ----------------------------------------------------------------- presets
    @classmethod
    def paper(cls, **overrides: Any) -> "CorrectorConfig":
        """The published size (about 16.2M trainable parameters with token_dim 384): skip U-Net
        64/128/256 (3 pools), K 3 + K_bg 4 queries, d 384, 8 heads, 3 layers, FFN 1024."""
        return replace(cls(), **overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> "CorrectorConfig":
        """A small variant for CPU training (about 1.3M parameters with token_dim 448): U-Net
        16/32/64, d 128, 4 heads, 2 layers, FFN 256, residual proposal prior (initial scale 2)."""
        base = cls(d_model=128, num_heads=4, num_layers=2, ffn_dim=256, base_channels=16, recon_hidden=128,
                   proposal_prior=2.0)
        return replace(base, **overrides)

    # ----------------------------------------------------------------- helpers
    @property
    def widths(self) -> list[int]:
        return [self.base_channels * 2 ** i for i in range(self.num_pools)]

    @property
    def dec_channels(self) -> int:
        return self.decoder_channels or self.base_channels * 2 ** self.num_pools

    @property
    def num_queries(self) -> int:
        return self.num_objects + self.num_bg

    def validate(self) -> "CorrectorConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if min(self.num_objects, self.num_layers, self.max_frames, self.num_pools, self.token_dim) < 1 \
                or self.num_bg < 0:
            raise ValueError("num_objects, num_layers, max_frames, num_pools, token_dim must be >= 1, num_bg >= 0")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_hw"] = list(self.token_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CorrectorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CorrectorConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "token_hw" in d:
            d["token_hw"] = tuple(d["token_hw"])
        return cls(**d).validate()


# --------------------------------------------------------------------------- attention
def slot_attention_weights(logits: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8,
                           renormalize: bool = True) -> torch.Tensor:
    """Slot-Attention-style weights from attention logits ``[..., Q, N]`` (Q queries, N keys).

    1. softmax over the **query** axis (``-2``): every key distributes one unit of
       attention over the queries allowed to see it;
    2. (``renormalize``) ``+ eps`` on the allowed pairs, then division by the sum over the
       **keys** (``-1``): every query's weights over the keys sum to 1.

    ``mask``: bool, broadcastable to ``logits``, ``True`` = the pair is allowed. Disallowed
    pairs get exactly 0. A key no query may see gets a zero column (no NaN); a query that may
    see no key gets a zero row. Computed in float32.
    """
    x = logits.float()
    if mask is not None:
        mask = mask.to(torch.bool)
        x = x.masked_fill(~mask, float("-inf"))
    mx = x.amax(dim=-2, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.exp(x - mx)                                          # 0 at masked pairs
    w = e / e.sum(dim=-2, keepdim=True).clamp_min(1e-30)           # zero column when fully masked
    if not renormalize:
        return w
    w = w + eps
    if mask is not None:
        w = w * mask.to(w.dtype)
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1e-30)


class SlotCrossAttention(nn.Module):
    """Multi-head cross-attention of grouped queries ``[B, G, Q, d]`` (G groups of Q competing
    queries, one group per target frame) to keys ``[B, N, d]`` with slot-style weights."""

    def __init__(self, d: int, heads: int, eps: float):
        super().__init__()
        self.h, self.dh, self.eps = heads, d // heads, eps
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False):
        # x [B, G, Q, d]; mem [B, N, d]; mask broadcastable to [B, 1, G, Q or 1, N] (True = allowed)
        B, G, Q, d = x.shape
        N = mem.shape[1]
        q = self.q(x).view(B, G, Q, self.h, self.dh).permute(0, 3, 1, 2, 4)      # [B, h, G, Q, dh]
        k = self.k(mem).view(B, N, self.h, self.dh).transpose(1, 2)              # [B, h, N, dh]
        v = self.v(mem).view(B, N, self.h, self.dh).transpose(1, 2)
        logits = torch.einsum("bhgqc,bhnc->bhgqn", q, k) * (1.0 / math.sqrt(self.dh))
        w = slot_attention_weights(logits, mask, self.eps)                       # [B, h, G, Q, N] f32
        out = torch.einsum("bhgqn,bhnc->bhgqc", w.to(v.dtype), v)
        out = self.o(out.permute(0, 2, 3, 1, 4).reshape(B, G, Q, d))
        return out, (w if need_weights else None)


class SelfAttention(nn.Module):
    """Standard multi-head self-attention with a key padding mask."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_ok: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        am = key_ok[:, None, None, :] if key_ok is not None else None               # [B, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=am)
        return self.o(out.transpose(1, 2).reshape(B, L, d))


class CorrectorLayer(nn.Module):
    """Pre-norm: self-attn -> slot cross-attn (target) -> FFN -> slot cross-attn (exemplars) -> FFN."""

    def __init__(self, cfg: CorrectorConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = SelfAttention(d, cfg.num_heads)
        self.tgt_attn = SlotCrossAttention(d, cfg.num_heads, cfg.slot_eps)
        self.ex_attn = SlotCrossAttention(d, cfg.num_heads, cfg.slot_eps)
        self.ffn1, self.ffn2 = FFN(d, cfg.ffn_dim, cfg.dropout), FFN(d, cfg.ffn_dim, cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(5))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, q, tgt_mem, tgt_mask, ex_mem, ex_mask, q_ok, need_weights=False):
        B, T, Q, d = q.shape
        h = self.norms[0](q).reshape(B, T * Q, d)
        q = q + self.drop(self.self_attn(h, q_ok)).view(B, T, Q, d)
        out, wt = self.tgt_attn(self.norms[1](q), tgt_mem, tgt_mask, need_weights)
        q = q + self.drop(out)
        q = q + self.ffn1(self.norms[2](q))
        out, we = self.ex_attn(self.norms[3](q), ex_mem, ex_mask, need_weights)
        q = q + self.drop(out)
        q = q + self.ffn2(self.norms[4](q))
        return q, wt, we


def pool_masks(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Masks ``[..., H, W]`` (0/1 or soft) to area fractions at token resolution ``hw``."""
    if tuple(masks.shape[-2:]) == tuple(hw):
        return masks.float()
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return F.adaptive_avg_pool2d(x, hw).reshape(*lead, *hw)


# --------------------------------------------------------------------------- model
class Corrector(nn.Module):
    """The mask corrector (see the module docstring).

    ``forward(rgb, masks, tokens, ex_tokens, ex_masks, ex_weight, ex_frame, tgt_frame)``:

    * ``rgb`` ``[B, T, 3, H, W]`` normalised RGB (:func:`pipeline.core.arrays.normalize_rgb`);
    * ``masks`` ``[B, T, K, H, W]`` proposal masks of the target frames (0/1);
    * ``tokens`` ``[B, T, C, h, w]`` backbone tokens of the target frames;
    * ``ex_tokens`` ``[B, E, C, h, w]`` tokens of the exemplar frames (all distinct exemplar
      frames of all objects, padded);
    * ``ex_masks`` ``[B, E, K, h', w']`` (any size; area-pooled to ``h, w``): proposal mask of
      object k at exemplar frame e if e is one of k's exemplars, else 0;
    * ``ex_weight`` ``[B, E, K]``: weight of exemplar e for object k (0: not an exemplar of k);
    * ``ex_frame`` ``[B, E]``, ``tgt_frame`` ``[B, T]``: absolute frame indices (``-1`` padding).

    Returns a dict: ``mask_logits`` ``[B, T, K, H, W]``, ``recon`` ``[B, T, C, h, w]``,
    ``alpha`` ``[B, T, Q, h, w]`` (softmax over the Q = K + K_bg queries), ``alpha_logits``,
    ``maps`` ``[B, T, K, heads, h, w]`` (the mask head's per-head object maps), ``queries``
    ``[B, T, Q, d]``; with ``need_weights=True`` also ``attn_target`` / ``attn_exemplar``:
    lists (one per layer) of slot-attention weights ``[B, heads, T, Q, N]`` (N = T*h*w target
    keys, frame-major / E*h*w exemplar keys, exemplar-major).
    """

    def __init__(self, cfg: CorrectorConfig | None = None):
        super().__init__()
        self.cfg = cfg = (cfg or CorrectorConfig.paper()).validate()
        d, C, K, Kb = cfg.d_model, cfg.token_dim, cfg.num_objects, cfg.num_bg
        th, tw = cfg.token_hw
        aff = cfg.instance_norm_affine
        # token inputs
        self.token_norm = nn.LayerNorm(C)
        self.tgt_proj = nn.Linear(C, d)
        self.ex_proj = nn.Linear(C, d)
        self.mem_norm = nn.LayerNorm(d)
        self.pos_space = nn.Parameter(torch.randn(d, th, tw) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.identity = nn.Parameter(torch.randn(K, d) * 0.02)          # object-identity codes (exemplar keys)
        # queries
        self.query_proj = nn.Sequential(nn.Linear(C, d), nn.LayerNorm(d))
        # same scale as the layer-normalised object queries
        self.empty_object = nn.Parameter(torch.randn(d))
        self.slot_embed = nn.Parameter(torch.randn(K, d) * 0.02)
        self.bg_queries = nn.Parameter(torch.randn(Kb, d))
        self.query_time = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        # transformer
        self.layers = nn.ModuleList(CorrectorLayer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(d)
        # mask head
        self.map_q, self.map_k = nn.Linear(d, d), nn.Linear(d, d)
        widths = cfg.widths
        self.enc = nn.ModuleList()
        cin = 3 + K
        for w in widths:
            self.enc.append(ConvBlock(cin, w, aff))
            cin = w
        self.map_proj = nn.Conv2d(K * cfg.num_heads, cfg.dec_channels, 1)
        self.up = nn.ModuleList()
        cin = cfg.dec_channels
        for w in reversed(widths):
            self.up.append(Up(cin, w, aff))
            cin = w
        self.head = nn.Conv2d(widths[0], K, 3, padding=1)
        self.prior_scale = nn.Parameter(torch.tensor(float(cfg.proposal_prior))) if cfg.proposal_prior else None
        # False after self-supervised adaptation to real video (pipeline.corrector.adapt): the
        # target frames' proposal masks are zeroed at the upsampler's input and the proposal prior is
        # off, so the masks come from appearance (the queries still start from the exemplars)
        self.proposal_inputs = True
        # auxiliary broadcast decoder: first layer split into a query part and a position part
        rh = cfg.recon_hidden or d
        self.rec_q = nn.Linear(d, rh)
        self.rec_pos = nn.Parameter(torch.randn(rh, th, tw) * 0.02)
        self.rec_mlp = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(rh, rh), nn.ReLU(inplace=True))
        self.rec_alpha = nn.Linear(rh, 1)
        self.rec_feat = nn.Linear(rh, C)

    # ----------------------------------------------------------------- utils
    def param_count(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @staticmethod
    def _resize_grid(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return p

    def _norm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C, h, w]`` -> ``[..., h*w, C]`` layer-normalised over C."""
        return self.token_norm(x.flatten(-2).transpose(-1, -2))

    # ----------------------------------------------------------------- forward
    def forward(self, rgb: torch.Tensor, masks: torch.Tensor, tokens: torch.Tensor, ex_tokens: torch.Tensor,
                ex_masks: torch.Tensor, ex_weight: torch.Tensor, ex_frame: torch.Tensor, tgt_frame: torch.Tensor,
                need_weights: bool = False) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        K, Kb, Q, C, nh = cfg.num_objects, cfg.num_bg, cfg.num_queries, cfg.token_dim, cfg.num_heads
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must be [B, T, 3, H, W], got {tuple(rgb.shape)}")
        B, T, _, H, W = rgb.shape
        if masks.shape != (B, T, K, H, W):
            raise ValueError(f"masks must be [B, T, K={K}, H, W] = {(B, T, K, H, W)}, got {tuple(masks.shape)}")
        if tokens.dim() != 5 or tokens.shape[:3] != (B, T, C):
            raise ValueError(f"tokens must be [B, T, C={C}, h, w], got {tuple(tokens.shape)}")
        h, w = tokens.shape[-2:]
        E = ex_tokens.shape[1]
        if ex_tokens.shape != (B, E, C, h, w):
            raise ValueError(f"ex_tokens must be [B, E, C={C}, {h}, {w}], got {tuple(ex_tokens.shape)}")
        if ex_masks.dim() != 5 or ex_masks.shape[:3] != (B, E, K):
            raise ValueError(f"ex_masks must be [B, E, K={K}, h', w'], got {tuple(ex_masks.shape)}")
        if ex_weight.shape != (B, E, K) or ex_frame.shape != (B, E) or tgt_frame.shape != (B, T):
            raise ValueError(f"ex_weight [B, E, K], ex_frame [B, E], tgt_frame [B, T] expected, got "
                             f"{tuple(ex_weight.shape)}, {tuple(ex_frame.shape)}, {tuple(tgt_frame.shape)}")
        if T > cfg.max_frames:
            raise ValueError(f"window of {T} frames exceeds max_frames={cfg.max_frames}")
        div = 2 ** cfg.num_pools
        if H % div or W % div:
            raise ValueError(f"H and W must be divisible by {div}, got {H} x {W}")
        hw = h * w
        dev = rgb.device
        tgt_frame, ex_frame = tgt_frame.to(dev).long(), ex_frame.to(dev).long()
        tgt_ok, ex_ok = tgt_frame >= 0, ex_frame >= 0                                # [B, T], [B, E]

        # ---- memories
        pos = self._resize_grid(self.pos_space, h, w).flatten(1).t()                 # [hw, d]
        tn = self._norm_tokens(tokens)                                                # [B, T, hw, C]
        mem_t = self.mem_norm(self.tgt_proj(tn)) + pos + self.pos_time[:T, None, :]
        d = mem_t.shape[-1]
        mem_t = mem_t.reshape(B, T * hw, d)
        exn = self._norm_tokens(ex_tokens)                                            # [B, E, hw, C]
        exm = pool_masks(ex_masks.to(dev), (h, w)).flatten(-2)                        # [B, E, K, hw]
        exm = exm * ex_ok[:, :, None, None].to(exm.dtype)
        ident = torch.einsum("bekn,kd->bend", exm.to(exn.dtype), self.identity.to(exn.dtype))
        mem_e = (self.mem_norm(self.ex_proj(exn)) + pos + ident).reshape(B, E * hw, d)

        # ---- query initialisation
        wgt = ex_weight.to(dev).float() * ex_ok[:, :, None].float()                  # [B, E, K]
        area = exm.float().sum(-1)                                                    # [B, E, K]
        wgt = torch.where(area > 0, wgt, torch.zeros_like(wgt))
        pooled = torch.einsum("bekn,benc->bekc", exm.float(), exn.float()) / area.clamp_min(1e-6)[..., None]
        tot = wgt.sum(1)                                                              # [B, K]
        obj_feat = torch.einsum("bek,bekc->bkc", wgt, pooled) / tot.clamp_min(1e-12)[..., None]
        obj = self.query_proj(obj_feat.to(exn.dtype))                                 # [B, K, d]
        obj = torch.where((tot > 0)[..., None], obj, self.empty_object.to(obj.dtype).expand_as(obj))
        obj = obj + self.slot_embed
        q0 = torch.cat([obj, self.bg_queries[None].expand(B, Kb, d).to(obj.dtype)], dim=1)   # [B, Q, d]
        q = q0[:, None] + self.query_time[:T, None, :]                                # [B, T, Q, d]

        # ---- attention masks
        q_ok = tgt_ok[:, :, None].expand(B, T, Q).reshape(B, T * Q)                   # self-attn keys
        tgt_mask = tgt_ok[:, None, None, None, :, None].expand(B, 1, 1, 1, T, hw).reshape(B, 1, 1, 1, T * hw)
        own = (ex_frame[:, None, :] != tgt_frame[:, :, None]) & ex_ok[:, None, :]    # [B, T, E]
        ex_mask = own[:, None, :, None, :, None].expand(B, 1, T, 1, E, hw).reshape(B, 1, T, 1, E * hw)

        attn_t, attn_e = [], []
        for layer in self.layers:
            q, wt, we = layer(q, mem_t, tgt_mask, mem_e, ex_mask, q_ok, need_weights)
            if need_weights:
                attn_t.append(wt)
                attn_e.append(we)
        q = self.out_norm(q)                                                          # [B, T, Q, d]

        # ---- mask head: per-head maps of the object queries against their own frame's tokens
        dh = d // nh
        mk = self.map_k(mem_t.view(B, T, hw, d)).view(B, T, hw, nh, dh)
        mq = self.map_q(q).view(B, T, Q, nh, dh)
        lg = torch.einsum("btqhc,btnhc->bthqn", mq, mk) * (1.0 / math.sqrt(dh))      # [B, T, nh, Q, hw]
        maps = torch.softmax(lg.float(), dim=-2)[:, :, :, :K]                          # [B, T, nh, K, hw]
        maps = maps.permute(0, 1, 3, 2, 4).reshape(B, T, K, nh, h, w)
        mask_in = masks.to(rgb.dtype) if self.proposal_inputs else torch.zeros_like(masks, dtype=rgb.dtype)
        x = torch.cat([rgb, mask_in], dim=2).reshape(B * T, 3 + K, H, W)
        skips = []
        for i, blk in enumerate(self.enc):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        y = maps.reshape(B * T, K * nh, h, w).to(x.dtype)
        bh, bw = H // div, W // div
        if (h, w) != (bh, bw):
            y = F.interpolate(y, size=(bh, bw), mode="bilinear", align_corners=False)
        y = self.map_proj(y)
        for up, skip in zip(self.up, reversed(skips)):
            y = up(y, skip)
        mask_logits = self.head(y).reshape(B, T, K, H, W)
        if self.prior_scale is not None and self.proposal_inputs:
            mask_logits = mask_logits + self.prior_scale.to(mask_logits.dtype) * (2 * masks.to(mask_logits.dtype) - 1)

        # ---- auxiliary head: broadcast decoder, alpha over queries, reconstruction
        rp = self._resize_grid(self.rec_pos, h, w).flatten(1).t()                    # [hw, rh]
        z = self.rec_q(q)[:, :, :, None, :] + rp                                      # [B, T, Q, hw, rh]
        z = self.rec_mlp(z)                                                           # [B, T, Q, hw, rh]
        alpha_logits = self.rec_alpha(z).squeeze(-1).float()                          # [B, T, Q, hw]
        alpha = torch.softmax(alpha_logits, dim=2)                                    # over queries
        # feat_q = rec_feat(z_q) is affine, and sum_q alpha_q = 1, so
        # sum_q alpha_q feat_q = rec_feat(sum_q alpha_q z_q): the Q feature maps are never built
        mix = torch.einsum("btqn,btqnr->btnr", alpha.to(z.dtype), z)
        recon = self.rec_feat(mix).transpose(-1, -2).reshape(B, T, C, h, w)
        out = {"mask_logits": mask_logits, "recon": recon, "alpha": alpha.reshape(B, T, Q, h, w),
               "alpha_logits": alpha_logits.reshape(B, T, Q, h, w), "maps": maps, "queries": q}
        if need_weights:
            out["attn_target"], out["attn_exemplar"] = attn_t, attn_e
        return out


EXPORT_FORMAT = "motionseg-corrector/1"


# --------------------------------------------------------------------------- data
def backbone_name(attr: Any) -> str | None:
    """The backbone name of a features store's ``backbone`` attribute (the
    ``pipeline.features`` description dict's ``name``, or a plain string)."""
    if isinstance(attr, Mapping):
        attr = attr.get("name")
    return str(attr) if attr else None


def backbone_sha256(attr: Any) -> str | None:
    """The backbone weights' sha256 recorded in a features store's ``backbone`` attribute, if any."""
    return str(attr["weights_sha256"]) if isinstance(attr, Mapping) and attr.get("weights_sha256") else None


def exemplar_inputs(frames: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-object exemplar lists -> the model's exemplar layout.

    ``frames [K, t]`` (``-1`` padding), ``weights [K, t]``; returns ``ex_frame [E]`` (the distinct
    exemplar frames, sorted), ``ex_weight [E, K]`` (weight of frame e for object k, 0 if e is not
    one of k's exemplars) and ``member [E, K]`` bool.
    """
    frames = np.asarray(frames)
    K = frames.shape[0]
    ex_frame = np.unique(frames[frames >= 0]).astype(np.int64)
    pos = {int(f): i for i, f in enumerate(ex_frame)}
    ex_weight = np.zeros((len(ex_frame), K), np.float32)
    member = np.zeros((len(ex_frame), K), bool)
    for k in range(K):
        for j, f in enumerate(frames[k]):
            if f >= 0:
                ex_weight[pos[int(f)], k] = weights[k, j]
                member[pos[int(f)], k] = True
    return ex_frame, ex_weight, member


def load_corrector(path: str | os.PathLike, device: Any = "cpu") -> tuple[Corrector, dict]:
    """Load an exported checkpoint: ``(model in eval mode, fp32, on device; info)``.

    ``info``: ``path``, ``model_config``, ``token_dim``, ``backbone`` (name), ``backbone_sha256`` (of
    the backbone weights the training features were made with, when recorded), ``train`` (window, t, ...),
    ``summary``, ``encoding``, ``weights_sha256``, ``file_sha256``, ``device``, ``proposal_inputs``
    (False for a corrector adapted to real video: :mod:`pipeline.corrector.adapt`).
    """
    doc = read_export(path, EXPORT_FORMAT, "corrector", "train and export one with `dvc repro "
                      "training/dvc.yaml:train_corrector`, publish it with `motionseg checkpoints publish corrector`, "
                      "or point corrector.checkpoint at an existing file")
    cfg = CorrectorConfig.from_dict(doc["model_config"])
    model = Corrector(cfg)
    model.load_state_dict(decode_state(doc["state"]))
    model.proposal_inputs = bool(doc.get("proposal_inputs", True))     # False: adapted to real video
    dev = resolve_device(device)
    model = model.to(dev).eval()
    info = {**export_info(path, doc, dev), "token_dim": cfg.token_dim, "backbone": cfg.backbone,
            "backbone_sha256": (doc.get("train") or {}).get("backbone_sha256"), "proposal_inputs": model.proposal_inputs}
    return model, info
