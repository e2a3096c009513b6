"""Stage synth: render one synthetic split (train | val) as per-video stores + a contact sheet."""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.draw import save_png
from pipeline.core.runtime import run_stage
from pipeline.synth.dataset import (
    build_split,
    make_source_bank,
    split_contact_sheet,
    synth_config,
)


def main(split: str) -> None:
    sp = section(load_params(), "synth")
    if split in ("sources", "config", "flow") or not isinstance(sp.get(split), dict):
        raise KeyError(f"params.yaml has no split section synth.{split} (count, seed)")
    # reads exactly the keys dvc.yaml declares: synth.<split>, synth.sources, synth.config
    sc, src, conf = sp[split], sp["sources"], sp.get("config") or {}
    cfg = synth_config(conf)
    bank, sources = make_source_bank(src, base=project_root())
    out = project_root() / "data" / "synth" / split
    params = {"synth": {split: sc, "sources": src, "config": conf}}
    build_split(split, int(sc["count"]), int(sc["seed"]), cfg, bank, out / "render",
                params=params, sources=sources)
    save_png(out / "contact_sheet.png", split_contact_sheet(out / "render", count=3))
    print(f"synth: {split} ({int(sc['count'])} videos, sources {sources['kind']}) -> {out / 'render'}")


if __name__ == "__main__":
    run_stage(main)
