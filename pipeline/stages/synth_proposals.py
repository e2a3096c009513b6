"""Stage synth_proposals: OCLR proposals (published checkpoint) of every video of a synthetic split,
the training inputs of the selector and the corrector."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.core.config import load_params, project_path, project_root, section
from pipeline.core.device import resolve_device
from pipeline.core.runtime import atomic_dir, run_stage
from pipeline.oclr.infer import write_proposals
from pipeline.oclr.model import load_oclr
from pipeline.synth.dataset import list_split


def build_split_proposals(flow_dir: Any, out_dir: Any, checkpoint: Any, pp: dict | None = None,
                          device: Any = "auto", progress: bool = True, workers: int = 1) -> Any:
    """Proposals stores ``<out_dir>/<video>.zarr`` for every flow store of a synthetic split
    (written atomically as a whole): the selector's and corrector's training inputs. ``workers`` > 1:
    that many videos at once in threads sharing the one model (a GPU's stores are bound by reading,
    compressing and hashing on the CPU, which release the GIL); each store is the same either way."""
    flow_dir = Path(flow_dir)
    render_dir = flow_dir.parent / "render"
    if (render_dir / "index.json").exists():   # split order from the render index
        stores = [flow_dir / r.name for r in list_split(render_dir)]
        missing = [s for s in stores if not s.exists()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: flow store missing (rerun the synth_flow stage)")
    else:
        stores = sorted(flow_dir.glob("*.zarr"))
    if not stores:
        raise FileNotFoundError(f"{flow_dir}: no flow stores (run the synth_flow stage first)")
    model, info = load_oclr(checkpoint, resolve_device(device))
    pp = {**dict(pp or {}), "checkpoint": str(checkpoint)}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        def one(store: Path) -> None:
            write_proposals(store, tmp / store.name, model, info, pp, quiet=True)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            done = pool.map(one, stores) if workers > 1 else map(one, stores)
            for _ in tqdm(done, total=len(stores), desc=f"proposals {Path(flow_dir).parent.name}", unit="video",
                          disable=not progress):
                pass
        (tmp / "index.json").write_text(json.dumps(
            {"videos": [{"store": s.name} for s in stores], "stage": "proposals",
             "checkpoint": {"path": str(checkpoint), "sha256": info["file_sha256"]}}, indent=1))
    return out_dir


def main(split: str) -> None:
    params = load_params()
    pp = dict(section(params, "proposals"))
    ckpt = Path(section(params, "synth")["proposals"]["checkpoint"])
    base = project_root() / "data" / "synth" / split
    build_split_proposals(base / "flow", base / "proposals", project_path(ckpt),
                          {k: pp.get(k) for k in ("window", "overlap", "infer_size", "batch", "threshold")
                           if pp.get(k) is not None},
                          device=pp["device"])
    print(f"synth_proposals: {split} -> {base / 'proposals'}")


if __name__ == "__main__":
    run_stage(main)
