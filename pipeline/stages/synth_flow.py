"""Stage synth_flow: estimated optical flow (RAFT by default) of one synthetic split's RGB."""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.synth.dataset import build_split_flow


def main(split: str) -> None:
    fp = section(section(load_params(), "synth"), "flow")  # the only params this stage reads
    base = project_root() / "data" / "synth" / split
    build_split_flow(base / "render", base / "flow", fp)
    print(f"synth_flow: {split} ({fp['method']}) -> {base / 'flow'}")


if __name__ == "__main__":
    run_stage(main)
