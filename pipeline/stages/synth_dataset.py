"""Stage synth_dataset: a synthetic split written as a DAVIS-style dataset folder
(``data/synth/<split>/dataset``: PNG frames, palette PNG modal ground truth), so the whole
inference pipeline can run and be scored on it:
``motionseg dataset use data/synth/val/dataset --name synthval --protocol multi && dvc repro``."""

from pipeline.core.config import project_root
from pipeline.core.runtime import atomic_dir, run_stage
from pipeline.synth.export import export_synth_split


def main(split: str) -> None:
    base = project_root() / "data" / "synth" / split
    with atomic_dir(base / "dataset") as tmp:
        names = export_synth_split(base / "render", tmp)
    print(f"synth_dataset: {split} ({len(names)} videos) -> {base / 'dataset'}")


if __name__ == "__main__":
    run_stage(main)
