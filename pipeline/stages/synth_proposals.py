"""Stage synth_proposals: OCLR proposals (published checkpoint) of every video of a synthetic split,
the training inputs of the selector and the corrector."""

from pathlib import Path

from pipeline.core.config import load_params, project_path, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.oclr.infer import build_split_proposals


def main(split: str) -> None:
    pp = dict(section(load_params(), "proposals"))
    ckpt = Path(pp.get("checkpoint") or "checkpoints/oclr_cpu.pt")
    base = project_root() / "data" / "synth" / split
    build_split_proposals(base / "flow", base / "proposals", project_path(ckpt),
                          {k: pp.get(k) for k in ("window", "overlap", "infer_size", "batch", "threshold")
                           if pp.get(k) is not None},
                          device=pp.get("device", "auto"))
    print(f"synth_proposals: {split} -> {base / 'proposals'}")


if __name__ == "__main__":
    run_stage(main)
