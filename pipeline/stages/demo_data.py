"""Stage demo_data: generate the embedded demo dataset (``data/demo/raw``), two short synthetic videos
with exact masks, so the pipeline runs end to end with nothing downloaded."""

from __future__ import annotations

from pipeline.core.runtime import atomic_dir
from pipeline.demo import DemoConfig, write_demo_dataset
from pipeline.core.stage import Ctx, Stage


def _whole(ctx: Ctx) -> str:
    cfg = DemoConfig(**ctx.section("demo"))
    out = ctx.data / "raw"
    with atomic_dir(out) as tmp:
        names = write_demo_dataset(tmp, cfg)
    return f"demo dataset: {len(names)} sequences x {cfg.frames} frames -> {out}"


STAGE = Stage("demo_data", params=("demo",), whole=_whole, out="raw", datasets=("demo",))
