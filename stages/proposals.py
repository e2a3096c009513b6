"""Stage proposals: OCLR layered object proposals of one sequence from its flow."""

import sys
from pathlib import Path

from pipeline.config import artifact_path, load_params, project_root, section
from pipeline.models.oclr_train import load_oclr, resolve_device
from pipeline.proposals import predict_sequence
from pipeline.runtime import run_stage
from pipeline.store import ArtifactWriter, FrameReader, open_artifact


def main(sequence: str) -> None:
    params = load_params()
    ds, pp = params["dataset"]["name"], dict(section(params, "proposals"))
    flow_art = open_artifact(artifact_path(ds, "flow", sequence), stage="flow")
    flow = flow_art.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"))
    T, _, h, w = flow.shape
    ckpt = Path(pp.get("checkpoint") or "checkpoints/oclr_cpu.pt")
    dev = resolve_device(pp.get("device", "auto"))
    model, info = load_oclr(ckpt if ckpt.is_absolute() else project_root() / ckpt, dev)
    trained = info["train"]
    window = int(pp.get("window") or trained.get("clip_len") or 30)
    overlap = pp.get("overlap")
    overlap = int(overlap) if overlap is not None else max(1, window // 3)
    infer = pp.get("infer_size") or trained.get("size")
    if trained.get("clip_len") and window > int(trained["clip_len"]):
        print(f"proposals: warning: window {window} is longer than the {trained['clip_len']} frames the "
              f"checkpoint was trained on (untrained time embeddings)", file=sys.stderr)
    K = model.cfg.num_queries
    out = artifact_path(ds, "proposals", sequence)
    run: dict = {}
    with ArtifactWriter(out, stage="proposals", params={"proposals": pp},
                        inputs={"flow": flow_art.path,
                                "checkpoint": {"path": str(ckpt), "sha256": info["file_sha256"]}}) as wr:
        amodal = wr.create("amodal", (T, K, h, w), "float16", ("frame", "object", "y", "x"),
                           attrs={"meaning": "amodal probability of object slot k (identities kept over "
                                             "the sequence)"})
        labels = wr.create("labels", (T, h, w), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, k+1 = object slot k where its modal "
                                             "probability is the largest and > 0.5"})
        order = wr.create("order", (T, K), "float32", ("frame", "object"),
                          attrs={"meaning": "depth score of slot k (higher = nearer the front), per window, "
                                            "blended in overlaps"})
        for fp in predict_sequence(model, FrameReader(flow), window=window, overlap=overlap, device=dev,
                                   batch=int(pp.get("batch", 1)), infer_size=infer, info=run):
            amodal[fp.t] = fp.amodal
            labels[fp.t] = fp.labels
            order[fp.t] = fp.order
        wr.attrs.update({
            "sequence": sequence, "num_objects": K, "window": window, "overlap": overlap,
            "infer_size": run.get("infer_size"), "windows": run.get("windows"),
            "checkpoint": {"path": str(ckpt), "sha256": info["file_sha256"],
                           "weights_sha256": info["weights_sha256"], "encoding": info["encoding"],
                           "train": trained, "summary": info["summary"]},
            "model_config": info["model_config"], "device": str(dev),
            "frame_names": flow_art.attrs.get("frame_names")})
    print(f"proposals: {sequence} ({T} frames, {len(run.get('windows') or [])} windows of {window}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
