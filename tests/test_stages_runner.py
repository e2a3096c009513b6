"""Dataset-level stages: fingerprints, skipping fresh sequences, executors giving the same bytes,
a stage killed half-way and rerun, per-dataset params."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.core.store import open_artifact
from pipeline.stages.registry import get_stage
from pipeline.core.stage import Ctx, load_dataset_params
from pipeline.stages.runner import run

REPO = Path(__file__).resolve().parents[1]


def _make_project(tmp: Path, n_seq: int = 3, T: int = 5, size=(72, 96), overrides: dict | None = None) -> Path:
    """A project folder with params.yaml, one dataset ``tiny`` of moving squares (DAVIS layout)."""
    root = tmp / "proj"
    (root / "datasets" / "tiny").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "checkpoints").symlink_to(REPO / "checkpoints")
    rng = np.random.default_rng(0)
    H, W = size
    for s in range(n_seq):
        img_dir = root / "raw" / "JPEGImages" / "480p" / f"seq{s}"
        ann_dir = root / "raw" / "Annotations" / "480p" / f"seq{s}"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        bg = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        for t in range(T):
            img = np.roll(bg, t, axis=1).copy()
            m = np.zeros((H, W), np.uint8)
            y, x = 10 + 2 * t, 20 + 3 * t + 5 * s
            m[y:y + 20, x:x + 24] = 255
            img[m > 0] = (200, 40, 40)
            cv2.imwrite(str(img_dir / f"{t:05d}.jpg"), img[..., ::-1])
            cv2.imwrite(str(ann_dir / f"{t:05d}.png"), m)
    doc = {"dataset": {"name": "tiny", "root": "raw", "layout": "davis", "resolution": "480p",
                       "sparse_gt": False, "protocol": "multi"},
           "frames": {"size": [48, 64], "store_full": False}, "flow": {"method": "dis"}, **(overrides or {})}
    (root / "datasets" / "tiny" / "dataset.yaml").write_text(yaml.safe_dump(doc))
    return root


def _ctx(root: Path, variant: str | None = None) -> Ctx:
    return Ctx("tiny", load_dataset_params("tiny", root), root, variant)


def _sha(root: Path, stage: str) -> dict:
    d = root / "data" / "tiny" / stage
    return {p.name: open_artifact(p).attrs["content_sha256"] for p in sorted(d.glob("*.zarr"))}


@pytest.fixture()
def project(tmp_path, monkeypatch):
    root = _make_project(tmp_path)
    monkeypatch.setenv("MOTIONSEG_ROOT", str(root))
    return root


def test_dataset_params_override_and_unknown_keys_fail(project):
    p = load_dataset_params("tiny", project)
    assert p["flow"]["method"] == "dis" and p["frames"]["size"] == [48, 64]
    base = yaml.safe_load((project / "params.yaml").read_text())
    assert p["flow"]["iters"] == base["flow"]["iters"]        # not overridden: from params.yaml
    f = project / "datasets" / "tiny" / "dataset.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["flow"]["methd"] = "raft_small"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(KeyError, match="unknown key 'flow.methd' .*did you mean 'flow.method'"):
        load_dataset_params("tiny", project)


def test_rerun_skips_fresh_sequences_and_a_param_change_redoes_them(project):
    ctx = _ctx(project)
    a = run(get_stage("frames"), ctx)
    b = run(get_stage("flow"), ctx)
    assert (a["ran"], b["ran"]) == (3, 3)
    first = _sha(project, "flow")
    again = run(get_stage("flow"), ctx)
    assert (again["ran"], again["skipped"]) == (0, 3)
    assert _sha(project, "flow") == first
    # a key flow reads changes: every sequence again; a key it does not read: nothing
    ctx.params["motion_baseline"]["num_objects"] = 2
    assert run(get_stage("flow"), ctx)["ran"] == 0
    ctx.params["flow"]["gap"] = 2
    assert run(get_stage("flow"), ctx)["ran"] == 3
    # an upstream store that changes content redoes its sequence only
    ctx.params["flow"]["gap"] = 1
    run(get_stage("flow"), ctx)
    shutil.rmtree(project / "data" / "tiny" / "frames" / "seq1.zarr")
    assert run(get_stage("frames"), ctx)["ran"] == 1
    assert run(get_stage("flow"), ctx)["ran"] == 0          # same bytes as before: still fresh
    assert _sha(project, "flow") == first


def test_a_training_stage_resumes_after_a_params_change_but_never_from_state_of_other_inputs(project, monkeypatch):
    """Dataset-level stages keep resumable state in their output folder (``last.pt``): a params change
    (more iterations) continues from it, new inputs (other flow) start over; the imas training once
    resumed a model trained on the old flow and reported it as new."""
    from pipeline.core.stage import Stage

    ctx = _ctx(project)
    run(get_stage("frames"), ctx)
    run(get_stage("flow"), ctx)
    seen = []

    def whole(c: Ctx) -> str:                     # a toy trainer: counts up from its saved state
        state = c.data / "toy" / "last.json"
        it = json.loads(state.read_text())["it"] if state.exists() else 0
        seen.append(it)
        state.write_text(json.dumps({"it": it + c.params["flow"]["batch_size"]}))
        return "toy"

    toy = Stage("toy", params=("flow.batch_size",), inputs=("flow",), whole=whole, out="toy")
    monkeypatch.setattr("pipeline.stages.runner.code_checksum", lambda st: "toy code")   # not a registered stage
    assert run(toy, ctx)["ran"] == 1 and run(toy, ctx)["ran"] == 0        # fresh: skipped
    ctx.params["flow"]["batch_size"] = 3                                    # params only: resumes
    assert run(toy, ctx)["ran"] == 1 and seen == [0, 4]
    ctx.params["flow"]["gap"] = 2                                           # the flow stores change
    assert run(get_stage("flow"), ctx)["ran"] == 3
    assert run(toy, ctx)["ran"] == 1 and seen == [0, 4, 0]                  # started over
    (project / "data" / "tiny" / "toy" / ".inputs.json").unlink()           # unknown inputs: start over too
    ctx.params["flow"]["batch_size"] = 5
    assert run(toy, ctx)["ran"] == 1 and seen == [0, 4, 0, 0]


def test_sequences_that_left_the_dataset_are_removed(project):
    ctx = _ctx(project)
    run(get_stage("frames"), ctx)
    shutil.rmtree(project / "raw" / "JPEGImages" / "480p" / "seq2")
    shutil.rmtree(project / "raw" / "Annotations" / "480p" / "seq2")
    run(get_stage("frames"), ctx)
    assert sorted(p.name for p in (project / "data" / "tiny" / "frames").glob("*.zarr")) == ["seq0.zarr", "seq1.zarr"]
    assert sorted(p.name for p in (project / "data" / "tiny" / "frames" / ".done").iterdir()) == \
        ["seq0.json", "seq1.json"]


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_executors_write_the_same_bytes_as_in_process(project, tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    ctx = _ctx(project)
    run(get_stage("frames"), ctx)
    run(get_stage("flow"), ctx)
    stages = ("flow", "motion_baseline", "proposals")       # proposals: a torch model (float results)
    for s in stages[1:]:
        run(get_stage(s), ctx)
    ref = {s: _sha(project, s) for s in stages}
    for s in stages:
        shutil.rmtree(project / "data" / "tiny" / s)
    for s in stages:
        info = run(get_stage(s), ctx, executor=executor, workers=2)
        assert info["ran"] == 3 and info["executor"] == executor
    assert {s: _sha(project, s) for s in stages} == ref


def test_killed_stage_reruns_only_unfinished_sequences(tmp_path, monkeypatch):
    root = _make_project(tmp_path, n_seq=6, T=12, size=(240, 320),
                         overrides={"frames": {"size": [240, 320], "store_full": True}})
    monkeypatch.setenv("MOTIONSEG_ROOT", str(root))
    ctx = _ctx(root)
    run(get_stage("frames"), ctx)
    env = {**os.environ, "MOTIONSEG_ROOT": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages", "flow", "tiny"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = root / "data" / "tiny" / "flow" / ".done"
    t0 = time.time()
    while not (done.is_dir() and any(done.glob("seq*.json"))) and time.time() - t0 < 120:   # a ledger entry, not
        time.sleep(0.01)                                                                       # its temporary file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.stem for p in done.glob("seq*.json"))
    assert 1 <= len(finished) < 6, "the stage was not killed half-way"
    # nothing half-written is visible: every store there is complete (atomic writes) and readable
    for p in (root / "data" / "tiny" / "flow").glob("*.zarr"):
        open_artifact(p, stage="flow")
    info = run(get_stage("flow"), ctx)
    assert (info["ran"], info["skipped"]) == (6 - len(finished), len(finished))
    assert not list((root / "data" / "tiny" / "flow").glob(".*.tmp-*"))    # the killed writer's leftovers
    assert sorted(p.stem for p in done.glob("seq*.json")) == [f"seq{i}" for i in range(6)]


def test_stage_cli_reports_a_bad_dataset_in_one_line(project):
    r = subprocess.run([sys.executable, "-m", "pipeline.stages", "flow", "nosuch"], cwd=project,
                       capture_output=True, text=True, env={**os.environ, "MOTIONSEG_ROOT": str(project)})
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "nosuch" in r.stderr and "Traceback" not in r.stderr


def test_metrics_stage_writes_per_sequence_json_and_a_summary(project):
    ctx = _ctx(project, "motion_baseline")
    for s in ("frames", "flow", "motion_baseline"):
        run(get_stage(s), _ctx(project))
    info = run(get_stage("metrics"), ctx)
    assert info["ran"] == 3
    summary = json.loads((project / "results" / "tiny" / "metrics" / "motion_baseline" / "summary.json").read_text())
    assert summary["n_sequences"] == 3 and 0.0 <= summary["J_mean"] <= 1.0
    assert run(get_stage("metrics"), ctx)["ran"] == 0


def test_run_registration_keeps_other_datasets_and_only_this_input(project, tmp_path):
    """`motionseg run` registers its input as a dataset: it never overwrites a dataset it did not make,
    refuses names that are not plain, and a second call with the same name sees only its own input."""
    from pipeline.api import register
    from pipeline.core.io import InputError

    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    with pytest.raises(InputError, match="not made by `motionseg run`"):
        register(a, "tiny", project)
    with pytest.raises(InputError, match="letters, digits"):
        register(a, "../x", project)
    assert register(a, "clip", project) == "clip"
    register(b, "clip", project)
    assert sorted(p.name for p in (project / "data" / "clip" / "input").iterdir()) == ["b.mp4"]
    doc = yaml.safe_load((project / "datasets" / "clip" / "dataset.yaml").read_text())
    assert doc["dataset"]["layout"] == "videos" and doc["dataset"]["root"] == "data/clip/input"


def test_run_presets_add_cpu_settings_keep_the_users_and_none_takes_them_back(project, tmp_path, monkeypatch):
    """`motionseg run --preset cpu` writes the CPU-sized sections into the video's dataset.yaml (valid params
    keys, dataset block first), never into a section where the user set one of the preset's keys; `--preset
    none` removes the preset's keys that still hold the preset's value, so params.yaml rules again; `auto` is
    cpu without CUDA and leaves the file alone with it; a bad preset, a malformed section, invalid YAML or
    an input that is not a video is a one-line error before any link, file or frame is written."""
    import torch

    from pipeline.api import MADE_BY, preset_overrides, register, segment
    from pipeline.core.io import InputError

    a = tmp_path / "a.mp4"
    a.write_bytes(b"x")
    f = project / "datasets" / "clip" / "dataset.yaml"
    register(a, "clip", project, preset="cpu")
    doc = yaml.safe_load(f.read_text())
    assert list(doc)[0] == "dataset" and doc["flow"] == preset_overrides()["flow"]
    p = load_dataset_params("clip", project)
    assert p["flow"]["infer_size"] == [128, 224] and p["mamp"]["registration"] is False
    assert p["crf"]["max_side"] == 427 and p["adapt"]["threads"] == 2
    doc["flow"] = {"method": "dis"}                             # the user's own flow
    doc["mamp"]["radius"] = 4                                   # ... and window
    f.write_text(MADE_BY + "\n" + yaml.safe_dump(doc))
    register(a, "clip", project, preset="cpu")
    doc = yaml.safe_load(f.read_text())
    assert doc["flow"] == {"method": "dis"} and doc["mamp"] == {"radius": 4, "registration": False}
    register(a, "clip", project, preset="none")
    doc = yaml.safe_load(f.read_text())
    assert list(doc)[0] == "dataset" and doc["flow"] == {"method": "dis"} and doc["mamp"] == {"radius": 4}
    assert not {"crf", "adapt"} & set(doc)
    base = yaml.safe_load((project / "params.yaml").read_text())
    assert load_dataset_params("clip", project)["crf"]["max_side"] == base["crf"]["max_side"]

    before = f.read_text()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    register(a, "clip", project, preset="auto")                  # with a GPU: the file as it is
    assert yaml.safe_load(f.read_text()) == yaml.safe_load(before)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    register(a, "clip", project, preset="auto")                  # without: the cpu preset
    assert yaml.safe_load(f.read_text())["crf"] == preset_overrides()["crf"]

    links = sorted(p.name for p in (project / "data" / "clip" / "input").iterdir())
    before = f.read_text()
    b = tmp_path / "b.mp4"                                      # a failed call must not link it
    b.write_bytes(b"y")
    with pytest.raises(InputError, match="preset 'gpu'"):
        register(b, "clip", project, preset="gpu")
    f.write_text(MADE_BY + "\nflow: raft_large\n")
    with pytest.raises(InputError, match="flow must be a mapping"):
        register(b, "clip", project, preset="cpu")
    assert f.read_text() == MADE_BY + "\nflow: raft_large\n"
    f.write_text(MADE_BY + "\nflow: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        register(b, "clip", project, preset="cpu")
    f.write_text(before)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError, match="not a video"):
        register(notes, "clip", project)
    assert sorted(p.name for p in (project / "data" / "clip" / "input").iterdir()) == links == ["a.mp4"]
    g = project / "datasets" / "run-arr" / "dataset.yaml"         # segment(): no frame written either
    g.parent.mkdir(parents=True)
    g.write_text(MADE_BY + "\nflow: raft_large\n")
    with pytest.raises(InputError, match="flow must be a mapping"):
        segment(np.zeros((3, 8, 8, 3), np.uint8), "arr", project, preset="cpu")
    assert not (project / "data" / "run-arr").exists()


def test_a_different_weights_file_reruns_the_stage_and_null_files_are_no_files(project, monkeypatch, tmp_path):
    """features: the backbone's weight file (found in the weights cache, outside the project) is part of
    the fingerprint; a params key naming a file set to null (mamp.checkpoint for backbone lab) is no file."""
    from pipeline.core.stage import weights_fingerprint

    ctx = _ctx(project)
    run(get_stage("frames"), ctx)
    st = get_stage("features")
    assert run(st, ctx)["ran"] == 3
    assert run(st, ctx)["ran"] == 0
    real = REPO / "checkpoints/mamp.pt"
    copy = tmp_path / "mamp_copy.pt"
    shutil.copy(real, copy)
    ctx.params["features"].update(backbone="mamp", weights=str(copy))
    assert run(st, ctx)["ran"] == 3                      # another backbone: redone
    assert run(st, ctx)["ran"] == 0
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    assert weights_fingerprint(lambda: copy) != weights_fingerprint(lambda: real)
    assert run(st, ctx)["ran"] == 3                      # other weights under the same name: redone
    assert weights_fingerprint(lambda: tmp_path / "missing.pt") is None
    ctx.params["mamp"].update(backbone="lab", checkpoint=None)
    assert get_stage("propagate_gt").file_paths(ctx) == []


def test_outputs_of_whole_dataset_stages_persist_so_dvc_keeps_what_the_skip_check_reads():
    """DVC deletes a stage's non-persistent outputs before running it; a dataset-level stage's runner
    skips only when its outputs exist (and its fingerprint matches), so an output DVC may delete would
    make every `dvc repro` redo the whole adaptation or training."""
    from pipeline.stages.registry import ORDER, get_stage

    whole = [get_stage(n) for n in ORDER if get_stage(n).whole is not None]
    assert {"adapt_corrector", "train_imas", "selection_eval"} <= {s.name for s in whole}
    for st in whole:
        kept = []
        for kind in ("outs", "metrics", "plots"):
            for d in st.dvc.get(kind, []):
                for path, opts in d.items():
                    assert (opts or {}).get("persist") is True, f"{st.name}: {kind} {path} is not persist"
                    kept.append(path)
        for kind in ("top_metrics", "top_plots"):          # files the skip check reads: inside a kept out
            for d in st.dvc.get(kind, []):
                for path in d:
                    assert any(path == k or path.startswith(k + "/") for k in kept), f"{st.name}: {path}"


def test_a_second_round_reuses_the_stages_before_proposals_and_links_their_stores(project):
    """``dataset.reuse``: a dataset over the same videos takes every stage that does not depend on the
    proposals from its source (no DVC stage of its own; deps name the source's folders; the runner links
    them), runs the proposals and all below again, and refuses params that would make the reused stores
    wrong or a real folder where a link goes."""
    from pipeline.stages.dvcgen import render
    from pipeline.stages.registry import link_reused, reused_stages, used_stages

    src = yaml.safe_load((project / "datasets" / "tiny" / "dataset.yaml").read_text())
    doc = {**src, "dataset": {**src["dataset"], "name": "tiny2", "reuse": "tiny"},
           "adapt_oclr": {"pseudo_labels": "../tiny/crf"},
           "proposals": {"checkpoint": "data/tiny2/adapt_oclr/oclr_adapted.pt"}}
    (project / "datasets" / "tiny2").mkdir()
    (project / "datasets" / "tiny2" / "dataset.yaml").write_text(yaml.safe_dump(doc))
    p2 = load_dataset_params("tiny2", project)
    reused = reused_stages(p2, "tiny2", project)
    assert {"frames", "flow", "motion_baseline", "features"} <= set(reused)
    assert not {"proposals", "selector", "exemplars", "corrector", "crf", "metrics"} & set(reused)
    names = used_stages(p2, "tiny2", project)
    assert not set(reused) & set(names) and {"proposals", "corrector", "crf"} <= set(names)
    stages = yaml.safe_load(render("tiny2", project))["stages"]
    assert "frames" not in stages and "flow" not in stages
    assert "data/tiny/flow" in stages["proposals"]["deps"]
    assert "data/tiny2/adapt_oclr/oclr_adapted.pt" in stages["proposals"]["deps"]
    # the round's first step is its own: the OCLR adapted on the source's flow and final masks (paths normalised)
    assert "adapt_oclr" not in used_stages(load_dataset_params("tiny", project), "tiny", project)
    assert {"data/tiny/flow", "data/tiny/crf", "${adapt_oclr.checkpoint}"} <= set(stages["adapt_oclr"]["deps"])
    assert stages["adapt_oclr"]["outs"][0] == {"data/tiny2/adapt_oclr": {"persist": True}}
    from pipeline.stages.adapt_oclr import _check_source

    _check_source(Ctx("tiny2", p2, project), p2["adapt_oclr"])          # the source's proposals checkpoint: fine
    with pytest.raises(ValueError, match="set adapt_oclr.checkpoint: "):
        _check_source(Ctx("tiny2", p2, project), {**p2["adapt_oclr"], "checkpoint": "other.pt"})
    assert "adapt_oclr" in yaml.safe_load(render("tiny2", project))["vars"][0]   # ${adapt_oclr.checkpoint} resolves
    for labels in ("crf", "../tiny2/crf", "../tiny/nothing"):      # its own masks (a cycle), or not the source's
        with pytest.raises(ValueError, match="set adapt_oclr.pseudo_labels: ../tiny/crf"):
            used_stages({**p2, "adapt_oclr": {**p2["adapt_oclr"], "pseudo_labels": labels}}, "tiny2", project)
    p1 = load_dataset_params("tiny", project)
    with pytest.raises(ValueError, match="with dataset.reuse"):   # a first round cannot hold it
        used_stages({**p1, "adapt_oclr": {**p1["adapt_oclr"], "pseudo_labels": "crf"}}, "tiny", project)
    assert stages["proposals"]["outs"] == [{"data/tiny2/proposals": {"persist": True}}]
    assert "data/tiny/features" in stages["selector"]["deps"] and "data/tiny2/proposals" in stages["selector"]["deps"]
    # the stages run on the source's stores through links
    ctx = _ctx(project)
    for n in ("frames", "flow"):
        run(get_stage(n), ctx)
    ctx2 = Ctx("tiny2", p2, project)
    made = link_reused(ctx2)
    assert (project / "data" / "tiny2" / "flow").is_symlink() and project / "data" / "tiny2" / "flow" in made
    assert link_reused(ctx2) == []                                             # already there
    assert sorted(p.name for p in (project / "data" / "tiny2" / "flow").glob("*.zarr")) == \
        ["seq0.zarr", "seq1.zarr", "seq2.zarr"]
    # a reused stage's params must be the source's; a folder in a link's way is an error
    bad = {**doc, "flow": {**doc["flow"], "gap": 2}}
    (project / "datasets" / "tiny2" / "dataset.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="flow.gap differs"):
        used_stages(load_dataset_params("tiny2", project), "tiny2", project)
    (project / "data" / "tiny2" / "flow").unlink()
    (project / "data" / "tiny2" / "flow").mkdir()
    with pytest.raises(FileExistsError, match="remove it"):
        link_reused(ctx2)


def test_an_imas_self_training_round_reruns_imas_and_below_from_the_source_model(project):
    """``imas_self_train.targets``: a second round whose root is IMAS. The round takes everything else from its
    source (proposals and correction included), trains the source's IMAS further in ``train_imas``'s place
    (the round's own ``imas_train`` folder, which its ``imas`` stage reads), and runs IMAS, the fusion and the
    CRF again; a round must switch an entry on, and the targets must be the source's masks."""
    from pipeline.stages.dvcgen import render
    from pipeline.stages.registry import reused_stages, used_stages

    src = yaml.safe_load((project / "datasets" / "tiny" / "dataset.yaml").read_text())
    src["fuse"] = {"sources": ["corrector", "imas"]}
    (project / "datasets" / "tiny" / "dataset.yaml").write_text(yaml.safe_dump(src))
    doc = {**src, "dataset": {**src["dataset"], "name": "tiny3", "reuse": "tiny"},
           "imas_self_train": {"targets": "../tiny/crf", "init": "data/tiny/imas_train/last.pt"}}
    (project / "datasets" / "tiny3").mkdir()
    (project / "datasets" / "tiny3" / "dataset.yaml").write_text(yaml.safe_dump(doc))
    p1, p3 = load_dataset_params("tiny", project), load_dataset_params("tiny3", project)
    assert "imas_self_train" not in used_stages(p1, "tiny", project)        # off in a first round
    reused = reused_stages(p3, "tiny3", project)
    assert {"frames", "flow", "proposals", "selector", "corrector", "features"} <= set(reused)
    assert not {"train_imas", "imas", "fuse", "crf"} & set(reused)
    names = used_stages(p3, "tiny3", project)
    assert names[:4] == ["imas_self_train", "imas", "fuse", "crf"] and "train_imas" not in names
    stages = yaml.safe_load(render("tiny3", project))["stages"]
    st = stages["imas_self_train"]
    assert {"data/tiny/frames", "data/tiny/features", "data/tiny/flow", "data/tiny/crf",
            "data/tiny/imas_train/last.pt"} <= set(st["deps"])
    assert st["outs"][0] == {"data/tiny3/imas_train": {"persist": True}}
    assert "data/tiny3/imas_train/imas.pt" in stages["imas"]["deps"]
    assert {"data/tiny/corrector", "data/tiny3/imas"} <= set(stages["fuse"]["deps"])
    for targets in ("crf", "../tiny3/crf", "../tiny/nothing"):
        with pytest.raises(ValueError, match="set imas_self_train.targets: ../tiny/crf"):
            used_stages({**p3, "imas_self_train": {**p3["imas_self_train"], "targets": targets}}, "tiny3", project)
    with pytest.raises(ValueError, match="starts no second round"):
        reused_stages({**p3, "imas_self_train": {**p3["imas_self_train"], "targets": None}}, "tiny3", project)
    with pytest.raises(ValueError, match="set imas_self_train.init: data/tiny/imas_train/last.pt"):
        used_stages({**p3, "imas_self_train": {**p3["imas_self_train"], "init": None}}, "tiny3", project)
    # a link left from a reuse that is over (train_imas was reused, now the round trains its own) goes away
    from pipeline.stages.registry import link_reused

    (project / "data" / "tiny" / "imas_train").mkdir(parents=True)
    (project / "data" / "tiny3").mkdir(parents=True)
    (project / "data" / "tiny3" / "imas_train").symlink_to(Path("..") / "tiny" / "imas_train")
    link_reused(Ctx("tiny3", p3, project))
    assert not (project / "data" / "tiny3" / "imas_train").exists() and (project / "data" / "tiny" / "imas_train").is_dir()
    assert (project / "data" / "tiny3" / "flow").is_symlink()
