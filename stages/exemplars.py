"""Stage exemplars: the t best frames of every proposal slot of one sequence by selector score.

Reads params ``corrector.t`` (only that key: changing it reruns exemplars and what follows,
not the selector) and ``data/<ds>/selector/<seq>.zarr`` (``score``); writes
``data/<ds>/exemplars/<seq>.zarr`` (``frames`` [K,t] i32, ``scores`` [K,t] f32, ``ranking``
[K,T] i32; attrs ``t``).
"""

from pipeline.config import artifact_path, load_params, section
from pipeline.runtime import run_stage
from pipeline.selector import write_exemplars


def main(sequence: str) -> None:
    params = load_params()
    ds = params["dataset"]["name"]
    t = int(section(params, "corrector").get("t", 10))
    if t < 1:
        raise KeyError(f"corrector.t must be >= 1, got {t}")
    out = artifact_path(ds, "exemplars", sequence)
    run = write_exemplars(artifact_path(ds, "selector", sequence), out, t, sequence=sequence)
    print(f"exemplars: {sequence} (t={t}; found per slot {run['found']} of {run['T']} frames) -> {out}")


if __name__ == "__main__":
    run_stage(main)
