"""Stage demo_data: generate the embedded default dataset (data/demo/raw)."""

from pipeline.config import load_params
from pipeline.demo import DemoConfig, write_demo_dataset
from pipeline.runtime import atomic_dir, run_stage


def main(out: str = "data/demo/raw") -> None:
    cfg = DemoConfig(**load_params()["demo"])
    with atomic_dir(out) as tmp:
        names = write_demo_dataset(tmp, cfg)
    print(f"demo dataset: {len(names)} sequences x {cfg.frames} frames -> {out}")


if __name__ == "__main__":
    run_stage(main)
