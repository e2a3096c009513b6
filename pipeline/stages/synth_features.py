"""Stage synth_features: appearance tokens of every video of one synthetic split.

Same backbone params as stage ``features`` (section ``features``: backbone,
weights, batch_size, device, amp, allow_download) so training and inference
see the same tokens; ``synth.features.max_videos`` (optional, null = all)
limits the number of videos. Reads ``data/synth/<split>/render/*.zarr``,
writes ``data/synth/<split>/features/`` atomically as a whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import atomic_dir, run_stage
from pipeline.features import FEATURES_STAGE, Backbone, build_backbone, write_features
from pipeline.synth.dataset import INDEX_NAME, list_split


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


def main(split: str) -> None:
    params = load_params()
    fp = dict(section(params, "features"))
    sp = dict(section(params, "synth")["features"])
    max_videos = sp["max_videos"]
    bb = build_backbone(fp["backbone"], weights=fp["weights"],
                        device=fp["device"],
                        allow_download=bool(fp["allow_download"]))
    base = project_root() / "data" / "synth" / split
    build_split_features(base / "render", base / "features", bb,
                         batch_size=int(fp["batch_size"]), amp=fp["amp"],
                         params={"features": fp, "synth": {"features": sp}},
                         max_videos=int(max_videos) if max_videos is not None else None)
    print(f"synth_features: {split} ({bb.name}, C={bb.dim}) -> {base / 'features'}")


if __name__ == "__main__":
    run_stage(main)
