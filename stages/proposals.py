"""Stage proposals: OCLR layered object proposals of one sequence from its flow."""

from pathlib import Path

from pipeline.config import artifact_path, load_params, project_path, section
from pipeline.models.oclr_train import load_oclr, resolve_device
from pipeline.proposals import write_proposals
from pipeline.runtime import run_stage


def main(sequence: str) -> None:
    params = load_params()
    ds, pp = params["dataset"]["name"], dict(section(params, "proposals"))
    ckpt = Path(pp.get("checkpoint") or "checkpoints/oclr_cpu.pt")
    dev = resolve_device(pp.get("device", "auto"))
    model, info = load_oclr(project_path(ckpt), dev)
    pp["checkpoint"] = str(ckpt)
    out = artifact_path(ds, "proposals", sequence)
    run = write_proposals(artifact_path(ds, "flow", sequence), out, model, info, pp, device=dev, sequence=sequence)
    print(f"proposals: {sequence} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
          f"{run['window']}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
