"""Mask selector: per-pixel error maps of one object's flow proposals over a whole clip.

Architecture of the appearance-refinement paper (Xie et al. 2024, Sec. 3.2 and
Appendix A.1; ``docs/refinement-design.md``). The selector works on ONE object
(proposal slot) at a time; a clip of ``T`` frames gives ``T`` error maps.

Data flow for ``rgb [B, T, 3, H, W]`` (ImageNet-normalised), ``mask [B, T, 1, H, W]``
(the slot's binary proposal, 0/1) and backbone ``tokens [B, T, C, h', w']``::

    per frame (B*T frames):
      RGB stem  3 -> s   and  mask stem  1 -> s   (conv 3x3 + IN + LeakyReLU each; the mask
        stem takes 1 + 2c channels with ``mask_context = c``: the neighbours' proposals too)
      concat -> fuse block  2s -> w0               (full resolution, skip 0)
      U-Net encoder: 2x2 max-pool + conv block, widths w1, w2, w3 (skips 1..3)
      bottleneck: 2x2 max-pool + conv block -> Cb channels at H/16 x W/16 (8 x 14 for 128 x 224)
    tokens adaptive-average-pooled to the bottleneck grid (DINO S/8 / MobileNetV2 16 x 28 -> 8 x 14)
    concat [Cb + C] -> linear -> d, + learned spatial (bottleneck grid) and temporal embeddings
    transformer encoder over all T*h*w tokens of the clip, with a mask so that a
    token NEVER attends to tokens of its own frame (it only sees the other frames;
    its own frame reaches it through the residual stream)
    LayerNorm -> linear d -> Cb -> U-Net decoder (2x2 transposed conv, concat skip, conv block)
    1x1 conv -> 3 logits per pixel: softmax = (false positive, false negative, correct)

A conv block is two 3x3 convs, each followed by InstanceNorm (affine) and
LeakyReLU(0.01). Channel order of the output follows :mod:`pipeline.exemplars.scoring`
(``FP, FN, CORRECT``).

Presets: :meth:`SelectorConfig.paper` (stems 16, widths 16/32/64/128,
bottleneck 256, d 256, 3 layers, 8 heads, FFN 256 -> 3.42M parameters with
``token_dim=384``, the paper's "about 3.3M") and :meth:`SelectorConfig.cpu`
(8/16/32/64, bottleneck 128, d 128, 2 layers, 4 heads, FFN 256 -> 0.87M with
the 448-d MobileNetV2 substitute tokens).

Frames and time: the temporal embedding has ``max_frames`` rows (100, the
longest clip the paper's selector handles); ``forward(..., time_offset=o)``
uses rows ``o .. o+T-1`` (training draws random offsets so every row is
trained; inference uses 0). A one-frame clip has no other frame to attend to:
the attention sub-layers then add nothing (output = the residual stream).

Memory: the attention is computed in blocks of query frames
(:attr:`Selector.attn_block_frames`, 0 = all at once) so a 100-frame clip
never materialises the full ``(T h w)^2`` attention matrix; the per-frame CNN
parts can be run in groups of ``frame_batch`` frames (inference).
"""

from __future__ import annotations

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

__all__ = ["SelectorConfig", "Selector", "ConvBlock", "FrameExclusiveAttention", "own_frame_mask",
           "selector_loss", "frame_log_scores", "rank_loss", "NUM_CLASSES"]

NUM_CLASSES = 3   # FP, FN, correct (pipeline.exemplars.scoring channel order)


# --------------------------------------------------------------------------- config
@dataclass
class SelectorConfig:
    """Every architectural knob of :class:`Selector`. Use :meth:`paper` or :meth:`cpu`."""

    stem_channels: int = 16
    """Output channels of the RGB stem and of the mask stem (each)."""
    widths: tuple[int, ...] = (16, 32, 64, 128)
    """U-Net level widths; level 0 (full resolution) is the fuse block. The number of
    2x2 max-pools is ``len(widths)`` (the last one leads to the bottleneck)."""
    bottleneck_channels: int = 256
    """Channels of the bottleneck conv block (and of the transformer's output projection)."""
    token_dim: int = 384
    """C of the backbone tokens concatenated at the bottleneck (DINO ViT-S: 384;
    MobileNetV2 substitute: 448). Must equal the features store's ``tokens.shape[1]``."""
    d_model: int = 256
    """Transformer width."""
    num_heads: int = 8
    ffn_dim: int = 256
    """Hidden width of the transformer feed-forward blocks (not stated in the paper; 256
    puts the paper preset at 3.42M parameters, the paper's "about 3.3M")."""
    num_layers: int = 3
    dropout: float = 0.1
    max_frames: int = 100
    """Rows of the learned temporal embedding = the longest clip accepted (paper: 100)."""
    bottleneck_hw: tuple[int, int] = (8, 14)
    """Size of the learned spatial embedding (bottleneck of a 128 x 224 input); resized
    bilinearly for other input sizes."""
    leaky_slope: float = 0.01
    mask_context: int = 0
    """Proposal masks of the ``mask_context`` previous and next frames of the clip fed to
    the mask stem beside the frame's own (0 = the paper: the own mask only). Channel
    order ``t, t-1, t+1, t-2, t+2, ...``; frame indices are clamped to the clip, so the
    first and last frames repeat their own mask. Gives the per-frame CNN a direct,
    full-resolution view of where the proposal disagrees with its neighbours (the
    transformer only sees the other frames at the 1/16 bottleneck)."""
    backbone: str | None = None
    """Name of the backbone whose tokens the model was trained on (recorded; checked by
    the selector stage against the features store)."""
    backbone_sha256: str | None = None
    """sha256 of that backbone's weight file (recorded; checked when both are known)."""

    @classmethod
    def paper(cls, **overrides: Any) -> "SelectorConfig":
        """The paper's size: stems 16, U-Net 16/32/64/128, bottleneck 256 at 8 x 14,
        transformer d 256, 8 heads, FFN 256, 3 layers (3.42M parameters with 384-d tokens)."""
        return replace(cls(), **overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> "SelectorConfig":
        """A small variant that trains on a CPU: stems 8, U-Net 8/16/32/64, bottleneck 128,
        d 128, 4 heads, 2 layers, FFN 256 (0.87M parameters with 448-d tokens)."""
        base = cls(stem_channels=8, widths=(8, 16, 32, 64), bottleneck_channels=128, d_model=128, num_heads=4,
                   ffn_dim=256, num_layers=2, dropout=0.0)
        return replace(base, **overrides)

    @property
    def num_pools(self) -> int:
        return len(self.widths)

    @property
    def stride(self) -> int:
        """Input H and W must be multiples of this (the bottleneck is H / stride)."""
        return 2 ** self.num_pools

    def validate(self) -> "SelectorConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"selector config: d_model {self.d_model} is not divisible by num_heads "
                             f"{self.num_heads}")
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ValueError(f"selector config: widths must be a non-empty list of positive ints, got {self.widths}")
        if int(self.mask_context) < 0:
            raise ValueError(f"selector config: mask_context must be >= 0, got {self.mask_context}")
        for k in ("stem_channels", "bottleneck_channels", "token_dim", "d_model", "num_heads", "ffn_dim",
                  "max_frames"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"selector config: {k} must be >= 1, got {getattr(self, k)}")
        if self.num_layers < 0:
            raise ValueError(f"selector config: num_layers must be >= 0, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"selector config: dropout must be in [0, 1), got {self.dropout}")
        if len(self.bottleneck_hw) != 2 or min(self.bottleneck_hw) < 1:
            raise ValueError(f"selector config: bottleneck_hw must be (h, w), got {self.bottleneck_hw}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["bottleneck_hw"] = list(self.bottleneck_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SelectorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SelectorConfig keys: {sorted(unknown)} (known: {sorted(known)})")
        d = dict(d)
        for k in ("widths", "bottleneck_hw"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d).validate()


# --------------------------------------------------------------------------- blocks
class ConvBlock(nn.Sequential):
    """Two 3x3 convs, each followed by InstanceNorm (affine) and LeakyReLU."""

    def __init__(self, cin: int, cout: int, slope: float = 0.01):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                         nn.LeakyReLU(slope),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                         nn.LeakyReLU(slope))


def _stem(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(slope))


def own_frame_mask(T: int, n: int, device: Any = None) -> torch.Tensor:
    """``[T*n, T*n]`` bool, True where query token i MAY attend to key token j, i.e. where
    they belong to different frames (token i is frame ``i // n``)."""
    f = torch.arange(T, device=device).repeat_interleave(n)
    return f[:, None] != f[None, :]


class FrameExclusiveAttention(nn.Module):
    """Multi-head self-attention over ``x [B, T, N, d]`` in which a token attends only to
    the tokens of the OTHER frames. Rows are computed in blocks of ``block_frames`` query
    frames (0 = all) with :func:`torch.nn.functional.scaled_dot_product_attention`.
    With ``T == 1`` there is nothing to attend to and the output is zero."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, block_frames: int = 0, kv: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, N, d]`` -> ``[B, T, N, d]``. ``kv``: a different source for the keys and
        values (same shape; default ``x``), which lets a test perturb what frame j's queries
        would read without touching the queries themselves."""
        B, T, N, d = x.shape
        if T == 1:
            return torch.zeros_like(x)
        h = self.heads
        w, bias = self.qkv.weight, self.qkv.bias
        src = x if kv is None else kv
        if kv is None:
            qkv = self.qkv(x.reshape(B, T * N, d)).reshape(B, T * N, 3, h, d // h).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]                               # [B, h, T*N, dh]
        else:
            q = F.linear(x.reshape(B, T * N, d), w[:d], bias[:d]).reshape(B, T * N, h, d // h).transpose(1, 2)
            kv2 = F.linear(src.reshape(B, T * N, d), w[d:], bias[d:]).reshape(B, T * N, 2, h, d // h)
            k, v = kv2.permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        frame = torch.arange(T, device=x.device).repeat_interleave(N)       # frame of each key
        bf = T if not block_frames or block_frames >= T else int(block_frames)
        outs = []
        for a in range(0, T, bf):
            b = min(T, a + bf)
            allow = frame[a * N:b * N, None] != frame[None, :]             # [(b-a)N, TN]
            outs.append(F.scaled_dot_product_attention(q[:, :, a * N:b * N], k, v, attn_mask=allow, dropout_p=p))
        o = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]           # [B, h, T*N, dh]
        return self.out(o.transpose(1, 2).reshape(B, T, N, d))


class _Layer(nn.Module):
    """Pre-LayerNorm transformer encoder layer with :class:`FrameExclusiveAttention`."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = FrameExclusiveAttention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, block_frames: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), block_frames))
        return x + self.drop(self.ffn(self.norm2(x)))


class TemporalTransformer(nn.Module):
    """Stack of :class:`_Layer` over ``[B, T, N, d]`` + final LayerNorm."""

    def __init__(self, d: int, heads: int, ffn: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([_Layer(d, heads, ffn, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, block_frames: int = 0) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, block_frames)
        return self.norm(x)


# --------------------------------------------------------------------------- model
class Selector(nn.Module):
    """Error-map predictor for one object over a clip; see the module docstring."""

    attn_block_frames: int = 0
    """Query frames per attention block (0 = all at once). The inference code sets it
    to bound memory on long clips; it does not change the result (up to float rounding)."""

    def __init__(self, cfg: SelectorConfig | None = None):
        super().__init__()
        self.cfg = cfg = (cfg or SelectorConfig.paper()).validate()
        s, ws, sl = cfg.stem_channels, list(cfg.widths), cfg.leaky_slope
        self.rgb_stem = _stem(3, s, sl)
        self.mask_stem = _stem(self.mask_channels, s, sl)
        self.fuse = ConvBlock(2 * s, ws[0], sl)
        self.down = nn.ModuleList([ConvBlock(ws[i - 1], ws[i], sl) for i in range(1, len(ws))])
        self.bottleneck = ConvBlock(ws[-1], cfg.bottleneck_channels, sl)
        self.proj_in = nn.Linear(cfg.bottleneck_channels + cfg.token_dim, cfg.d_model)
        bh, bw = cfg.bottleneck_hw
        self.pos_space = nn.Parameter(torch.randn(cfg.d_model, bh, bw) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(cfg.max_frames, cfg.d_model) * 0.02)
        self.transformer = TemporalTransformer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.num_layers, cfg.dropout)
        self.proj_out = nn.Linear(cfg.d_model, cfg.bottleneck_channels)
        ups, decs = [], []
        cin = cfg.bottleneck_channels
        for w in reversed(ws):
            ups.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            decs.append(ConvBlock(2 * w, w, sl))
            cin = w
        self.ups, self.decs = nn.ModuleList(ups), nn.ModuleList(decs)
        self.head = nn.Conv2d(ws[0], NUM_CLASSES, 1)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def mask_channels(self) -> int:
        """Input channels of the mask stem: the own mask + 2 per context frame."""
        return 1 + 2 * int(self.cfg.mask_context)

    def context_masks(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask [B, T, 1, H, W]`` -> ``[B, T, mask_channels, H, W]``: per frame its own mask,
        then those of frames ``t-1, t+1, ..., t-c, t+c`` (indices clamped to ``0 .. T-1``)."""
        c = int(self.cfg.mask_context)
        if c == 0:
            return mask
        T = mask.shape[1]
        t = torch.arange(T, device=mask.device)
        idx = [t] + [(t + s * d).clamp(0, T - 1) for d in range(1, c + 1) for s in (-1, 1)]
        return torch.cat([mask[:, i] for i in idx], dim=2)

    # ----------------------------------------------------------------- parts
    def _encode(self, rgb: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per-frame encoder: ``[skip0, ..., skip_{L-1}, bottleneck]``."""
        x = self.fuse(torch.cat([self.rgb_stem(rgb), self.mask_stem(mask)], dim=1))
        feats = [x]
        for blk in self.down:
            x = blk(F.max_pool2d(x, 2))
            feats.append(x)
        feats.append(self.bottleneck(F.max_pool2d(x, 2)))
        return feats

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, dec, skip in zip(self.ups, self.decs, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def _positions(self, T: int, h: int, w: int, time_offset: torch.Tensor) -> torch.Tensor:
        """``[B, T, h*w, d]`` space-time embedding for frames ``offset .. offset+T-1``."""
        ps = self.pos_space
        if ps.shape[-2:] != (h, w):
            ps = F.interpolate(ps[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        ps = ps.flatten(1).t()                                              # [h*w, d]
        idx = time_offset[:, None] + torch.arange(T, device=time_offset.device)[None, :]   # [B, T]
        return self.pos_time[idx][:, :, None, :] + ps[None, None]

    # ----------------------------------------------------------------- forward
    def forward(self, rgb: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                time_offset: int | torch.Tensor = 0, frame_batch: int = 0) -> torch.Tensor:
        """Error-map logits ``[B, T, 3, H, W]`` (softmax over dim 2 = FP, FN, correct).

        Args:
            rgb: ``[B, T, 3, H, W]`` float, ImageNet-normalised
                (:func:`pipeline.core.arrays.normalize_rgb`).
            mask: ``[B, T, 1, H, W]`` float 0/1, the object's proposal.
            tokens: ``[B, T, C, h', w']`` backbone tokens (any grid; average-pooled to
                the bottleneck grid ``H/16 x W/16`` when it differs).
            time_offset: first temporal-embedding row (int or ``[B]`` tensor);
                ``offset + T`` must not exceed ``max_frames``.
            frame_batch: run the per-frame CNN parts on at most this many frames at a
                time (0 = all; bounds memory at inference, same result).
        """
        cfg = self.cfg
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"selector: rgb must be [B, T, 3, H, W], got {tuple(rgb.shape)}")
        B, T, _, H, W = rgb.shape
        if mask.shape != (B, T, 1, H, W):
            raise ValueError(f"selector: mask must be [B, T, 1, H, W] = {(B, T, 1, H, W)}, got {tuple(mask.shape)}")
        if tokens.dim() != 5 or tokens.shape[:2] != (B, T) or tokens.shape[2] != cfg.token_dim:
            raise ValueError(f"selector: tokens must be [B, T, {cfg.token_dim}, h, w] (token_dim of the model), "
                             f"got {tuple(tokens.shape)}")
        if H % cfg.stride or W % cfg.stride:
            raise ValueError(f"selector: input {H}x{W} is not a multiple of {cfg.stride}")
        off = torch.as_tensor(time_offset, device=rgb.device, dtype=torch.long).reshape(-1).expand(B)
        if int(off.min()) < 0 or int(off.max()) + T > cfg.max_frames:
            raise ValueError(f"selector: frames {int(off.min())}..{int(off.max()) + T - 1} exceed the "
                             f"{cfg.max_frames} temporal embeddings (run long videos in chunks)")
        h, w = H // cfg.stride, W // cfg.stride
        n = B * T
        x_rgb = rgb.reshape(n, 3, H, W)
        x_mask = self.context_masks(mask.to(rgb.dtype)).reshape(n, self.mask_channels, H, W)
        fb = n if not frame_batch or frame_batch >= n else int(frame_batch)
        if fb == n:
            feats = self._encode(x_rgb, x_mask)
        else:  # groups of frames written into preallocated outputs (no concatenation copy)
            feats = None
            for a in range(0, n, fb):
                part = self._encode(x_rgb[a:a + fb], x_mask[a:a + fb])
                if feats is None:
                    feats = [p.new_empty((n,) + p.shape[1:]) for p in part]
                for f, p in zip(feats, part):
                    f[a:a + len(p)] = p
                del part
        skips, bott = feats[:-1], feats[-1]                                 # bott [n, Cb, h, w]
        tok = tokens.reshape(n, cfg.token_dim, *tokens.shape[-2:]).to(bott.dtype)
        if tok.shape[-2:] != (h, w):
            tok = F.adaptive_avg_pool2d(tok, (h, w))
        z = torch.cat([bott, tok], dim=1).flatten(2).transpose(1, 2)        # [n, h*w, Cb + C]
        z = self.proj_in(z).reshape(B, T, h * w, cfg.d_model)
        z = z + self._positions(T, h, w, off).to(z.dtype)
        z = self.transformer(z, self.attn_block_frames)
        z = self.proj_out(z).reshape(n, h, w, cfg.bottleneck_channels).permute(0, 3, 1, 2)
        if fb == n:
            out = self._decode(z, skips)
        else:
            out = z.new_empty((n, NUM_CLASSES, H, W))
            for a in range(0, n, fb):
                out[a:a + fb] = self._decode(z[a:a + fb], [s[a:a + fb] for s in skips])
        return out.reshape(B, T, NUM_CLASSES, H, W)


# --------------------------------------------------------------------------- loss
def selector_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eq. 4: binary cross-entropy of each channel's softmax probability against the
    one-hot error map, averaged over pixels, channels and frames.

    ``logits`` ``[..., 3, H, W]``; ``target`` one-hot ``[..., 3, H, W]`` (float).
    ``pos_weight``: weight of the positive pixels of the FP and FN channels (1 = plain
    BCE as in the paper; > 1 counters the rarity of error pixels). ``valid``: optional
    ``[...]`` bool over the leading dims (e.g. padded frames) to exclude.
    Computed stably from the logits: ``log p_c = z_c - lse(z)``,
    ``log(1 - p_c) = lse(z_{-c}) - lse(z)``.
    """
    z = logits.float()
    y = target.to(z.dtype)
    lse = torch.logsumexp(z, dim=-3, keepdim=True)
    log_p = z - lse
    C = z.shape[-3]
    others = []
    for c in range(C):
        idx = [j for j in range(C) if j != c]
        others.append(torch.logsumexp(z[..., idx, :, :], dim=-3))
    log_not_p = torch.stack(others, dim=-3) - lse
    loss = -(y * log_p + (1 - y) * log_not_p)
    if pos_weight != 1.0:
        wgt = torch.ones_like(loss)
        wgt[..., :2, :, :] += (pos_weight - 1.0) * y[..., :2, :, :]
        loss = loss * wgt
    per = loss.mean(dim=(-3, -2, -1))
    if valid is not None:
        v = valid.to(per.dtype)
        return (per * v).sum() / v.sum().clamp_min(1.0)
    return per.mean()


def frame_log_scores(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable per-frame exemplar score: ``log(E + 1) - log(A + 1)`` with ``E`` the
    expected error area ``sum(p_FP + p_FN)`` of the softmax error map and ``A`` the proposal
    area -- the log of the soft relative error area of :func:`pipeline.exemplars.scoring.relative_error_area`
    (up to the ``+1`` in the numerator). ``logits [..., 3, H, W]``, ``mask [..., 1, H, W]``
    (or ``[..., H, W]``) -> ``[...]``."""
    p = torch.softmax(logits.float(), dim=-3)
    err = (p[..., 0, :, :] + p[..., 1, :, :]).sum(dim=(-2, -1))
    m = mask.float()
    area = (m[..., 0, :, :] if m.dim() == logits.dim() else m).sum(dim=(-2, -1))
    return torch.log1p(err) - torch.log1p(area)


def rank_loss(scores: torch.Tensor, iou: torch.Tensor, valid: torch.Tensor | None = None,
              margin: float = 0.05) -> torch.Tensor:
    """Pairwise logistic ranking loss over the frames of each clip.

    ``scores [B, T]`` (lower = better frame, e.g. :func:`frame_log_scores`), ``iou [B, T]``
    the proposal's true IoU per frame, ``valid [B, T]`` bool frames that take part (e.g.
    proposal area >= min_area). For every pair ``(i, j)`` of valid frames of one clip with
    ``iou_i > iou_j + margin`` the loss is ``softplus(s_i - s_j)`` (small when the better
    frame scores lower); mean over such pairs, 0 when a batch has none. This is the
    selection objective (Table 3 ranks frames by IoU) made differentiable."""
    s, q = scores.float(), iou.float()
    v = torch.ones_like(q, dtype=torch.bool) if valid is None else valid.bool()
    better = (q[:, :, None] > q[:, None, :] + margin) & v[:, :, None] & v[:, None, :]     # [B, i, j]
    if not bool(better.any()):
        return s.sum() * 0.0
    d = s[:, :, None] - s[:, None, :]
    return F.softplus(d)[better].mean()


EXPORT_FORMAT = "motionseg-selector/1"


def load_selector(path: str | os.PathLike, device: Any = "cpu") -> tuple[Selector, dict]:
    """Load an exported selector checkpoint: ``(model in eval mode, fp32, on device; info)``.

    ``info``: ``model_config`` (with ``token_dim``, ``backbone``, ``backbone_sha256``),
    ``train``, ``summary``, ``encoding``, ``weights_sha256``, ``file_sha256``, ``path``,
    ``device``.
    """
    doc = read_export(path, EXPORT_FORMAT, "selector", "produce it with `dvc repro training/dvc.yaml:train_selector` "
                      "(trains on data/synth, exports data/selector/selector_cpu.pt) then `motionseg checkpoints "
                      "publish selector`, or point selector.checkpoint at an existing file")
    model = Selector(SelectorConfig.from_dict(doc["model_config"]))
    model.load_state_dict(decode_state(doc["state"]))
    dev = resolve_device(device)
    model = model.to(dev).eval()
    info = export_info(path, doc, dev)
    return model, info
