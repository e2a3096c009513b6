"""Stage frames: ingest one sequence (frames at working + original size, GT)."""

from pipeline.config import DatasetConfig, artifact_path, load_params
from pipeline.io import ingest_sequence
from pipeline.runtime import run_stage


def main(sequence: str) -> None:
    params = load_params()
    ds = DatasetConfig.from_params(params)
    fr = params["frames"]
    out = artifact_path(ds.name, "frames", sequence)
    ingest_sequence(ds, sequence, out, tuple(fr["size"]), store_full=bool(fr["store_full"]),
                    params={"dataset": params["dataset"], "frames": fr})
    print(f"frames: {sequence} -> {out}")


if __name__ == "__main__":
    run_stage(main)
