"""Run a stage over a dataset: list its sequences, skip the fresh ones, map the rest on an executor.

Freshness: every per-sequence output has a fingerprint (sha256 of the params the stage reads, the
content checksums of its inputs for that sequence, the checkpoints it loads and the source of the
code it runs), kept in ``<out>/.done/<sequence>.json`` and written only after the output itself was
committed atomically. A rerun (after a kill, a crash, a params change) redoes exactly the sequences
whose output is missing or whose fingerprint differs, and removes outputs of sequences that are no
longer in the dataset, so the output folder always holds exactly the dataset's sequences.

Executors (``executor.kind`` in params.yaml): ``inprocess`` (default; ``setup`` once, sequences in
turn), ``process`` (a local pool of ``executor.workers`` processes, ``setup`` once per process) and
``ray`` (an existing cluster through ``RAY_ADDRESS`` or a local one of ``executor.workers`` CPUs:
one actor per worker holds the model, sequences are its tasks). Outputs do not depend on the
executor: each sequence is computed the same way in any of them, with ``executor.threads`` torch
threads (float results depend on the thread count, so it is one value for all).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.store import sha256_file, write_json_atomic
from pipeline.core.stage import Ctx, Stage, dataset_sequences, get_key

EXECUTORS = ("inprocess", "process", "ray")
LEDGER = ".done"


# --------------------------------------------------------------------------- fingerprints
def store_checksum(path: Path) -> str:
    """content_sha256 of a Zarr store, the sha256 of a file, or of a folder's files."""
    zj = path / "zarr.json"
    if zj.exists():
        doc = json.loads(zj.read_text())
        sha = (doc.get("attributes") or {}).get("content_sha256")
        if sha:
            return sha
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(path)}:{sha256_file(p)};".encode())
        return h.hexdigest()
    raise FileNotFoundError(f"{path}: missing input (run the upstream stage first)")


def code_files(stage_name: str) -> list[Path]:
    """Source files of the code a stage runs (its import closure inside the package)."""
    from pipeline.stages.deps import stage_code_files

    return stage_code_files(stage_name)


_CODE_MEMO: dict[str, str] = {}


def code_checksum(stage: Stage) -> str:
    if stage.name not in _CODE_MEMO:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parents[2]
        for p in code_files(stage.name):
            h.update(f"{p.relative_to(root)}:{sha256_file(p)};".encode())
        _CODE_MEMO[stage.name] = h.hexdigest()
    return _CODE_MEMO[stage.name]


def stage_params(stage: Stage, ctx: Ctx) -> dict:
    return {k: get_key(ctx.params, k) for k in stage.reads}


def fingerprint(stage: Stage, ctx: Ctx, sequence: str, source: Any = None) -> str:
    doc = {"stage": stage.name, "variant": ctx.variant, "params": stage_params(stage, ctx),
           "inputs": {d: store_checksum(ctx.data / d / f"{sequence}.zarr") for d in stage.input_dirs(ctx)},
           "files": {str(p.name): store_checksum(p) for p in stage.file_paths(ctx)},
           "source": source, "code": code_checksum(stage)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


#: in a dataset-level stage's output folder: the checksum of the inputs its (resumable) state was made from
INPUTS_MARK = ".inputs.json"


def _inputs_checksum(stage: Stage, ctx: Ctx, seqs: list[str]) -> str:
    doc = {"stores": {q: {d: store_checksum(ctx.data / d / f"{q}.zarr") for d in stage.input_dirs(ctx)}
                      for q in seqs},
           "files": {str(p.name): store_checksum(p) for p in stage.file_paths(ctx)}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _start_over_if_inputs_changed(stage: Stage, ctx: Ctx, out: Path, seqs: list[str]) -> None:
    """A dataset-level stage resumes its training from the state in its output folder (``last.pt``) when
    only its params changed (e.g. more iterations); state made from other inputs (new flow, new
    proposals, another checkpoint), or from unknown ones, is removed first, so it is never resumed."""
    ins = _inputs_checksum(stage, ctx, seqs)
    mark = out / INPUTS_MARK
    if out.exists():
        old = json.loads(mark.read_text()).get("inputs") if mark.exists() else None
        if old != ins:
            if any(out.iterdir()):
                print(f"{stage.name}: its inputs changed since {out} was written: starting over", flush=True)
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(mark, {"inputs": ins})        # an interrupted run resumes from what it saved


def _clean_leftovers(out_dir: Path) -> None:
    """Staging folders of writers killed before they could clean up (``.<name>.tmp-*``)."""
    if out_dir.is_dir():
        for p in out_dir.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in out_dir.glob(".*.old-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _done(out_dir: Path, seq: str) -> Path:
    return out_dir / LEDGER / f"{seq}.json"


def is_fresh(out_dir: Path, out: Path, seq: str, fp: str) -> bool:
    led = _done(out_dir, seq)
    if not (out.exists() and led.exists()):
        return False
    try:
        return json.loads(led.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- workers
_STATE: dict[str, Any] = {}


def _worker_init(stage_name: str, ctx: Ctx, threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from pipeline.stages.registry import get_stage

    st = get_stage(stage_name)
    _STATE["stage"], _STATE["ctx"] = st, ctx
    _STATE["state"] = st.setup(ctx) if st.setup else None


def _worker_run(seq: str) -> tuple[str, str, float]:
    st, ctx = _STATE["stage"], _STATE["ctx"]
    t0 = time.perf_counter()
    out = st.out_dir(ctx) / f"{seq}{st.suffix}"
    msg = st.run(_STATE["state"], ctx, seq, out)
    return seq, msg, time.perf_counter() - t0


class _RayWorker:
    def __init__(self, stage_name: str, ctx: Ctx, threads: int | None):
        _worker_init(stage_name, ctx, threads)

    def run(self, seq: str) -> tuple[str, str, float]:
        return _worker_run(seq)


def _map(stage: Stage, ctx: Ctx, todo: list[str], kind: str, workers: int,
         threads: int) -> Iterable[tuple[str, str, float]]:
    if not todo:
        return
    if kind == "inprocess":
        import torch

        saved = torch.get_num_threads()
        try:
            _worker_init(stage.name, ctx, threads)
            for seq in todo:
                yield _worker_run(seq)
        finally:
            torch.set_num_threads(saved)
        return
    n = max(1, min(workers, len(todo)))
    if kind == "process":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(stage.name, ctx, threads)) as pool:
            yield from pool.map(_worker_run, todo)
        return
    if kind == "ray":
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise ImportError("executor.kind: ray needs Ray: pip install 'motionseg[ray]'") from None
        started = not ray.is_initialized()
        if started:
            addr = os.environ.get("RAY_ADDRESS")
            ray.init(address=addr or None, num_cpus=None if addr else n * threads, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"MOTIONSEG_ROOT": str(ctx.root)}})
        try:
            n_gpu = int(ray.cluster_resources().get("GPU", 0)) if stage.gpu else 0
            gpus = 1 if n_gpu >= 1 else 0
            if gpus:                 # one GPU per actor: never more actors than GPUs (others would wait forever)
                n = min(n, n_gpu)
            actor = ray.remote(num_cpus=threads, num_gpus=gpus)(_RayWorker)
            actors = [actor.remote(stage.name, ctx, threads) for _ in range(n)]
            yield from ActorPool(actors).map_unordered(lambda a, s: a.run.remote(s), todo)
        finally:
            if started:
                ray.shutdown()
        return
    raise KeyError(f"executor.kind: unknown executor {kind!r} ({' | '.join(EXECUTORS)})")


# --------------------------------------------------------------------------- the stage
def run(stage: Stage, ctx: Ctx, executor: str | None = None, workers: int | None = None,
        sequences: list[str] | None = None) -> dict:
    """Run ``stage`` on ``ctx.dataset``; returns timings and counts (printed by the CLI)."""
    ex = dict(ctx.params.get("executor") or {})
    kind = executor or str(get_key(ctx.params, "executor.kind"))
    workers = int(workers or ex.get("workers") or 2)
    threads = int(ex.get("threads") or 1)
    t0 = time.perf_counter()
    if stage.whole is not None:     # one job over the dataset: one fingerprint over all its sequences
        out = stage.out_dir(ctx) if stage.out else None
        # the ledger sits in the output folder (it travels with it through dvc checkout), else beside
        led = out / f"{LEDGER}.json" if out is not None else ctx.data / LEDGER / f"{stage.name}.json"
        seqs = dataset_sequences(ctx) if stage.inputs else []
        fp = hashlib.sha256(json.dumps([fingerprint(stage, ctx, q) for q in seqs] or
                                       [fingerprint(stage, ctx, "", None)]).encode()).hexdigest()
        declared = [ctx.root / path.format(dataset=ctx.dataset) for kind in
                    ("outs", "metrics", "plots", "top_metrics", "top_plots")
                    for d in stage.dvc.get(kind, []) for path in d]
        present = (out is None or out.exists()) and all(p.exists() for p in declared)
        if present and led.exists() and json.loads(led.read_text()).get("fingerprint") == fp:
            if out is not None and not (out / INPUTS_MARK).exists():     # a folder from before the mark:
                write_json_atomic(out / INPUTS_MARK, {"inputs": _inputs_checksum(stage, ctx, seqs)})  # fresh
            print(f"{stage.name}: up to date", flush=True)
            return {"stage": stage.name, "ran": 0, "skipped": 1, "wall_s": time.perf_counter() - t0}
        led.unlink(missing_ok=True)
        if out is not None:
            _start_over_if_inputs_changed(stage, ctx, out, seqs)
        print(stage.whole(ctx), flush=True)
        if out is not None:
            write_json_atomic(out / INPUTS_MARK, {"inputs": _inputs_checksum(stage, ctx, seqs)})
        write_json_atomic(led, {"stage": stage.name, "fingerprint": fp})
        return {"stage": stage.name, "ran": 1, "skipped": 0, "wall_s": time.perf_counter() - t0}
    missing = [f for f in stage.file_paths(ctx) if not f.exists()]
    if missing:            # the loader's own message says how to make it
        if stage.setup is not None:
            stage.setup(ctx)
        raise FileNotFoundError(f"{missing[0]}: missing (named by params of stage {stage.name})")
    out_dir = stage.out_dir(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out_dir)
    seqs = sequences if sequences is not None else (
        stage.sequences(ctx) if stage.sequences else dataset_sequences(ctx))
    fps = {s: fingerprint(stage, ctx, s, stage.source(ctx, s) if stage.source else None) for s in seqs}
    todo = [s for s in seqs if not is_fresh(out_dir, out_dir / f"{s}{stage.suffix}", s, fps[s])]
    for s in todo:
        _done(out_dir, s).unlink(missing_ok=True)
    if len(todo) < len(seqs):
        print(f"{stage.name}: {len(seqs) - len(todo)} of {len(seqs)} sequences up to date", flush=True)
    busy = 0.0
    t_map = time.perf_counter()
    for seq, msg, dt in _map(stage, ctx, todo, kind if len(todo) > 1 else "inprocess", workers, threads):
        write_json_atomic(_done(out_dir, seq), {"sequence": seq, "fingerprint": fps[seq]})
        busy += dt
        print(msg, flush=True)
    map_s = time.perf_counter() - t_map
    if sequences is None:   # outputs of sequences no longer in the dataset
        keep = {f"{s}{stage.suffix}" for s in seqs}
        for p in list(out_dir.iterdir()):
            if p.name not in keep and not p.name.startswith("."):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in list((out_dir / LEDGER).glob("*.json")) if (out_dir / LEDGER).is_dir() else []:
            if p.stem not in set(seqs):
                p.unlink()
    if stage.finalize is not None:
        print(stage.finalize(ctx, seqs), flush=True)
    wall = time.perf_counter() - t0
    return {"stage": stage.name, "dataset": ctx.dataset, "executor": kind, "ran": len(todo),
            "skipped": len(seqs) - len(todo), "wall_s": wall, "map_s": map_s, "busy_s": busy}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.stages STAGE[,STAGE...] DATASET [VARIANT] [--executor K] [--workers N]``."""
    import argparse

    from pipeline.core.runtime import report_errors
    from pipeline.stages.registry import get_stage, link_reused
    from pipeline.core.stage import load_dataset_params

    ap = argparse.ArgumentParser(prog="python -m pipeline.stages", description=main.__doc__)
    ap.add_argument("stage", help="a stage, or several separated by commas (run in that order)")
    ap.add_argument("dataset")
    ap.add_argument("variant", nargs="?")
    ap.add_argument("--executor", choices=EXECUTORS)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--timings", type=Path, help="also write the run's timings (JSON) here")
    a = ap.parse_args(argv)

    def go() -> None:
        from pipeline.core.config import project_root

        params = load_dataset_params(a.dataset)
        link_reused(Ctx(a.dataset, params, project_root()))   # a second round: the source's stores it reuses
        infos = []
        for stage in [get_stage(n) for n in a.stage.split(",")]:   # a combined DVC stage: its steps in turn
            if stage.variants and not a.variant and stage.foreach:
                raise KeyError(f"stage {stage.name} needs a variant (one of params {stage.variants})")
            variants = [a.variant] if a.variant or not stage.variants else list(get_key(params, stage.variants))
            infos += [run(stage, Ctx(a.dataset, params, project_root(), v), a.executor, a.workers) for v in variants]
        if a.timings:
            write_json_atomic(a.timings, infos[0] if len(infos) == 1 else infos)

    return report_errors(go)


if __name__ == "__main__":
    sys.exit(main())
