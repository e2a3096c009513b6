"""The label-free tuner: run the part of the pipeline a params key affects once per candidate value and
pick the value whose masks have the best mean motion-semantic alignment, or with ``score="agreement"`` the
best agreement with the other mask stages (no labels either way). When the dataset
has ground truth, J is computed beside it (reported, never used to choose).

Each candidate runs in a scratch project under ``data/<ds>/tune/``: the stores the key does not affect
are links to the dataset's own (which are never touched), the affected stages (those reading the key
and everything downstream of them up to the scored stage) run with the candidate value; a training
stage among them starts from a copy of its folder, so a resumable one redoes only what the key reaches
(``train_imas``: stage 2 alone for a stage-2 key). Agreement is measured only with stages whose stores
are valid for every candidate: the rerun ones and those the key does not reach. Writes
``results/<ds>/tune/<key>.csv`` and ``.json`` after every candidate (``"complete": false`` until the last), so a
killed tuner keeps what it finished: run again with the same setting (params, scored stage, score, the
code of the stages it runs, the stores it links; the report's ``setup`` fingerprint) and the finished
candidates are taken from the report instead of being run again.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.core.stage import Ctx, Stage, dataset_sequences, get_key, load_dataset_params
from pipeline.core.store import open_artifact, write_json_atomic
from pipeline.stages.registry import ORDER, get_stage, used_stages
from pipeline.stages.runner import run

__all__ = ["affected", "reached", "run_from_copy", "scratch_project", "scoring_params", "tune"]

SCORING = ("metrics", "quality", "export", "selection_eval")
#: params sections that define the score itself: never tuned by it
YARDSTICK = ("dataset", "features", "quality")
#: the label-free scores that can pick a candidate (columns of the quality stage's summary)
SCORES = ("alignment", "agreement")


def _covers(read: str, key: str) -> bool:
    return read == key or key.startswith(read + ".") or read.startswith(key + ".")


def _upstream(st: Stage, ctx: Ctx) -> set[str]:
    """The output folders a stage reads (inputs, and files inside ``data/<ds>/``, literal or named by a params
    key: a second round's ``proposals.checkpoint`` is its ``adapt_oclr`` stage's output)."""
    ups = set(st.input_dirs(ctx))
    for p in st.file_paths(ctx):
        if p.is_relative_to(ctx.data):
            ups.add(p.relative_to(ctx.data).parts[0])
    return ups


def reached(key: str, ctx: Ctx) -> set[str]:
    """The (non-scoring) stages whose outputs a new value of ``key`` changes: those reading ``key`` and
    everything downstream of them."""
    names = [n for n in used_stages(ctx.params, ctx.dataset) if n not in SCORING]
    hit: set[str] = set()
    for n in names:
        st = get_stage(n)
        if any(_covers(r, key) for r in st.reads) or {get_stage(m).out or m for m in hit} & _upstream(st, ctx):
            hit.add(n)
    return hit


def affected(key: str, target: str, ctx: Ctx) -> list[str]:
    """Stages (graph order) to rerun for a new value of ``key`` before scoring stage ``target``: those
    reading ``key`` or downstream of one that does, and upstream of (or equal to) ``target``."""
    names = [n for n in used_stages(ctx.params, ctx.dataset) if n not in SCORING]
    outs = {n: (get_stage(n).out or n) for n in names}
    hit = reached(key, ctx)
    need, todo = set(), [target]
    while todo:                                    # ancestors of the target
        n = todo.pop()
        if n in need:
            continue
        need.add(n)
        todo += [m for m in names if outs[m] in _upstream(get_stage(n), ctx)]
    return [n for n in names if n in hit and n in need]


def _set(params: dict, key: str, value: Any) -> dict:
    get_key(params, key)
    out = copy.deepcopy(params)
    cur = out
    *head, last = key.split(".")
    for p in head:
        cur = cur[p]
    cur[last] = value
    return out


def scratch_project(ctx: Ctx, base: Path, fresh: set[str]) -> Path:
    """A project root at ``base`` (made anew) whose ``data/<ds>/`` links every store folder of ``ctx``'s
    dataset except those named in ``fresh`` (left for the scratch run to write)."""
    if base.exists():
        shutil.rmtree(base)
    data = base / "data" / ctx.dataset
    data.mkdir(parents=True)
    for d in sorted(p for p in ctx.data.iterdir() if p.is_dir() and p.name not in fresh):
        (data / d.name).symlink_to(d, target_is_directory=True)
    for name in ("checkpoints", "datasets"):
        (base / name).symlink_to(ctx.root / name, target_is_directory=True)
    src = (ctx.params.get("dataset") or {}).get("reuse")
    if src and (ctx.root / "data" / str(src)).is_dir():     # a second round reads its source's stores too
        (base / "data" / str(src)).symlink_to(ctx.root / "data" / str(src), target_is_directory=True)
    return base


def run_from_copy(stage: Stage, ctx: Ctx, copied: Path | None, log: Callable[[str], None] = print) -> None:
    """Run ``stage`` in a candidate's scratch project. ``copied``: the training state copied from the
    dataset's own run; when the trainer refuses to resume it (the candidate changes what the state was
    trained with, e.g. ``imas.channels``: the trainers' :class:`~pipeline.train.scaffold.ResumeError`) it is
    removed and the stage trains from scratch."""
    from pipeline.train.scaffold import ResumeError

    try:
        run(stage, ctx)
    except ResumeError:
        if copied is None:
            raise
        log(f"{stage.name}: the copied state cannot be resumed with this value; training from scratch")
        shutil.rmtree(copied)
        run(stage, ctx)


def _references(params: dict, target: str) -> list[str]:
    """The stages the scored stage's agreement is measured against."""
    return [str(s) for s in params["quality"].get("agree_with") or [] if str(s) != target]


def scoring_params(params: dict, ctx: Ctx, rerun: Sequence[str], target: str, seqs: Sequence[str],
                   log: Callable[[str], None] = print, stale: Sequence[str] = ()) -> dict:
    """The quality stage that scores the candidates measures agreement with the stages of
    ``quality.agree_with``. Left out of it, with a line in the log: those whose stores the dataset lacks
    (and no candidate rewrites), instead of failing the candidate after its run, and the ``stale`` ones:
    stages the key changes that the candidates do not rerun (downstream of the rerun stages, not upstream
    of the scored one), whose stores were made with the current value and would pull every candidate
    towards it. When none is left and frames are flagged on agreement, they are flagged on alignment."""
    made = {get_stage(n).out or n for n in rerun}
    agree = [str(s) for s in params["quality"].get("agree_with") or []]
    missing = [s for s in agree if s != target and s not in made and s not in stale
               and not all(ctx.store(get_stage(s).out or s, q).exists() for q in seqs)]
    biased = [s for s in agree if s != target and s in stale]
    if not missing and not biased:
        return params
    kept = [s for s in agree if s not in missing and s not in biased]
    if missing:
        log(f"agreement measured without {', '.join(missing)} (no stores in data/{ctx.dataset}/)")
    if biased:
        log(f"agreement measured without {', '.join(biased)} (the key changes them; their stores hold the "
            "current value's masks)")
    params = _set(params, "quality.agree_with", kept)
    if not _references(params, target) and params["quality"].get("flag_on") == "agreement":
        params = _set(params, "quality.flag_on", "alignment")
    return params


def setup_fingerprint(params: dict, key: str, target: str, score: str, rerun: Sequence[str], seqs: Sequence[str],
                      ctx: Ctx, read: Sequence[str]) -> str:
    """sha256 of everything a candidate's row depends on but its value: the params with ``key`` blanked, the
    scored stage, the score, the sequences, the code of the stages run (rerun + quality + metrics) and the
    checksum of every entry of the folders ``read`` of ``data/<ds>/`` (those the scratch projects link or copy)."""
    from pipeline.stages.runner import code_checksum, store_checksum

    state = {f"{d}/{e.name}": store_checksum(e) for d in sorted(read) for e in sorted((ctx.data / d).iterdir())}
    code = {n: code_checksum(get_stage(n)) for n in [*rerun, "quality", "metrics"]}
    blob = json.dumps({"params": _set(params, key, None), "key": key, "target": target, "score": score,
                       "sequences": list(seqs), "code": code, "state": state}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _write_report(out: Path, name: str, report: dict) -> None:
    write_json_atomic(out / f"{name}.json", report)
    cols = ["value", "alignment", "agreement", "J", "JF", "flagged_frames", "seconds"]

    def cell(c: str, v: Any) -> Any:      # a value as YAML would read it back; a missing score empty
        if c == "value":
            return v if isinstance(v, str) else json.dumps(v)
        return "" if v is None else v
    tmp = out / f".{name}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([cell(c, r[c]) for c in cols] for r in report["rows"])
    tmp.replace(out / f"{name}.csv")


def _earlier(path: Path, setup: str) -> dict:
    """An earlier report at ``path`` made with the same ``setup`` fingerprint ({} otherwise)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old if old.get("setup") == setup else {}


def tune(dataset: str, key: str, values: Sequence[Any], target: str | None = None, root: Path | None = None,
         overrides: dict | None = None, log: Callable[[str], None] = print, score: str = "alignment",
         resume: bool = True) -> dict:
    """Run the tuner (see the module docstring); returns the report (also written to results). ``score``:
    the label-free score that picks, ``alignment`` (motion-semantic alignment of the scored stage's masks)
    or ``agreement`` (their matched-object IoU with the other mask stages of ``quality.agree_with``, which
    must have stores). ``resume``: take the candidates an earlier run with the same setup finished from its
    report (see the module docstring) instead of running them again."""
    if score not in SCORES:
        raise ValueError(f"score {score!r}: expected one of {', '.join(SCORES)}")
    from pipeline.core.config import project_root

    root = root or project_root()
    if not values:
        raise ValueError(f"tune {key}: no candidate values")
    if key.split(".")[0] in YARDSTICK or any(k.split(".")[0] in YARDSTICK for k in (overrides or {})):
        raise ValueError(f"tune {key}: the dataset, the features and the alignment knobs (quality.*) the score is "
                         "computed with cannot be tuned (every candidate must be scored the same way)")
    params = load_dataset_params(dataset, root)
    for k, v in (overrides or {}).items():
        params = _set(params, k, v)
    ctx = Ctx(dataset, params, root)
    target = target or "crf"
    hit = {n for k in [key, *(overrides or {})] for n in affected(k, target, ctx)}
    rerun = [n for n in ORDER if n in hit]
    # the rerun stages and the scoring stages write in the scratch project; its own folder is not linked
    fresh = ({get_stage(n).out or n for n in rerun} | {"tune"}
             | {(get_stage(n).out or n).split("/")[0] for n in SCORING})
    if target not in rerun:
        raise ValueError(f"{key} does not change the masks of stage {target!r} (it is read by none of the stages "
                         f"up to it); pick the scored stage with --method")
    seqs = dataset_sequences(ctx)
    stale = sorted({n for k in [key, *(overrides or {})] for n in reached(k, ctx)} - set(rerun))
    params = scoring_params(params, ctx, rerun, target, seqs, log, stale)
    if score == "agreement" and not _references(params, target):
        raise ValueError(f"--score agreement: none of quality.agree_with has stores in data/{dataset}/ "
                         f"(run those stages first)")
    has_gt = all(open_artifact(ctx.store("frames", s)).attrs.get("has_gt") for s in seqs)
    log(f"tune {key} on {dataset}: {len(values)} values, rerunning {', '.join(rerun)} on {len(seqs)} sequences, "
        f"scoring {target} by {'motion-semantic alignment' if score == 'alignment' else 'agreement'}"
        + (" (J beside it)" if has_gt else ""))
    out = root / "results" / dataset / "tune"
    out.mkdir(parents=True, exist_ok=True)
    name = key if score == "alignment" else f"{key}.by_{score}"
    # training stages among the rerun ones start from a copy of the dataset's state (IMAS redoes only what the
    # key reaches); what a candidate reads from the dataset: the linked folders and those copies
    trained = {n: get_stage(n).out or n for n in rerun if get_stage(n).whole is not None}
    read = [d.name for d in ctx.data.iterdir() if d.is_dir() and (d.name not in fresh or d.name in trained.values())]
    setup = setup_fingerprint(params, key, target, score, rerun, seqs, ctx, read)
    earlier = _earlier(out / f"{name}.json", setup) if resume else {}
    done = {json.dumps(r["value"], sort_keys=True): r for r in earlier.get("rows") or []}
    report = {"dataset": dataset, "key": key, "current": get_key(params, key), "scored_stage": target,
              "reran": rerun, "overrides": overrides or {}, "backbone": earlier.get("backbone"), "score": score,
              "agree_with": params["quality"]["agree_with"], "setup": setup, "complete": False,
              "choice": None, "rows": [], "best_J": None}
    rows = report["rows"]
    for i, value in enumerate(values):
        prev = done.get(json.dumps(value, sort_keys=True))
        if prev:
            rows.append(prev)
            log(f"{key} = {value!r}: finished by an earlier run with the same setup ({out / (name + '.json')})")
            continue
        p = _set(params, key, value)
        base = scratch_project(ctx, ctx.data / "tune" / f"{key}-{i}", fresh)
        copied = {n: shutil.copytree(ctx.data / sub, base / "data" / dataset / sub)
                  for n, sub in trained.items() if (ctx.data / sub).is_dir()}
        sctx = Ctx(dataset, p, base)
        t0 = time.perf_counter()
        for n in rerun:
            run_from_copy(get_stage(n), sctx, copied.get(n), log)
        secs = time.perf_counter() - t0
        run(get_stage("quality"), Ctx(dataset, p, base, target))
        q = json.loads((base / "results" / dataset / "quality" / target / "summary.json").read_text())
        agree = q.get("agreement_mean")
        row = {"value": value, "alignment": round(q["alignment_mean"], 4),
               "agreement": None if agree is None else round(agree, 4), "J": None, "JF": None,
               "flagged_frames": q["flagged_frames"], "seconds": round(secs, 1)}
        if has_gt:
            run(get_stage("metrics"), Ctx(dataset, p, base, target))
            m = json.loads((base / "results" / dataset / "metrics" / target / "summary.json").read_text())
            row.update(J=round(m["J_mean"], 4), JF=round(m["JF_mean"], 4))
        rows.append(row)
        log(json.dumps(row))
        shutil.rmtree(base, ignore_errors=True)          # the candidate's stores: scored, no longer needed
        report["backbone"] = report["backbone"] or q.get("backbone")
        _write_report(out, name, report)                 # after every candidate: a killed tuner keeps them
    best = max(rows, key=lambda r: r[score])
    report.update(complete=True, choice=best["value"],
                  best_J=max(rows, key=lambda r: r["J"])["value"] if has_gt else None)
    _write_report(out, name, report)
    log(f"tune {key}: best {score} at {best['value']!r} (now {report['current']!r})"
        + (f"; best J at {report['best_J']!r}" if has_gt else "") + f" -> {out / (name + '.csv')}")
    return report
