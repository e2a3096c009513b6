"""End to end through DVC on a tiny embedded dataset (classical flow, a few frames).

Checks that `dvc repro` ends with masks exported and metrics written, that the
artifacts carry their provenance, and that `dvc exp run -S` on an
evaluation-only parameter reruns only the evaluation stages.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed next to this python")
    proj = tmp_path_factory.mktemp("proj")
    for name in ("pipeline", "checkpoints"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "datasets" / "demo").mkdir(parents=True)
    demo = yaml.safe_load((ROOT / "datasets" / "demo" / "dataset.yaml").read_text())
    # the test's own tiny settings live in params.yaml: keep only the dataset block, regenerate dvc.yaml
    (proj / "datasets" / "demo" / "dataset.yaml").write_text(yaml.safe_dump({"dataset": demo["dataset"]}))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, proj / name)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["demo"].update({"frames": 6, "height": 72, "width": 128})
    params["frames"]["size"] = [48, 80]
    params["flow"]["method"] = "dis"
    params["eval"]["methods"] = ["motion_baseline", "proposals", "corrector", "propagate_gt", "propagate", "crf"]
    params["export"]["methods"] = ["motion_baseline", "crf"]
    params["selection_eval"]["figures"] = 1
    params["adapt"].update({"iterations": 3, "check_windows": 1, "log_every": 1})
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / ".gitignore").write_text("/data/*\n")
    sync_env = {**os.environ, "MOTIONSEG_ROOT": str(proj)}
    _run([sys.executable, "-m", "pipeline.cli", "dataset", "sync"], proj, sync_env)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MOTIONSEG_ROOT": str(proj), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    _run(["git", "init", "-q"], proj, env)
    _run([str(BIN / "dvc"), "init", "-q"], proj, env)
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "init"], proj, env)
    out = _run([str(BIN / "dvc"), "repro"], proj, env)
    return proj, env, out


def test_repro_exports_masks_and_writes_metrics(project):
    proj, _, out = project
    summary = json.loads((proj / "results/demo/metrics/motion_baseline/summary.json").read_text())
    assert summary["n_sequences"] == 2 and 0.0 <= summary["JF_mean"] <= 1.0
    assert summary["protocol"] == "multi"
    assert summary["lineage"]["flow"]["estimator"]["method"] == "dis"
    for seq in ("demo-01", "demo-02"):
        exp = proj / "data/demo/export/motion_baseline" / seq
        pngs = sorted((exp / "masks").glob("*.png"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(6)]
        from PIL import Image

        im = Image.open(pngs[0])
        assert im.mode == "P" and im.size == (128, 72)  # original resolution, palette
        assert (exp / "overlay.png").stat().st_size > 0 and (exp / "overlay.mp4").exists()
    assert (proj / "results/demo/metrics/motion_baseline/per_sequence.png").exists()
    rows = (proj / "results/demo/metrics/motion_baseline/per_sequence.csv").read_text().splitlines()
    assert rows[0].startswith("sequence") and len(rows) == 3


def test_quality_report_scores_every_method_without_labels(project):
    proj, _, _ = project
    for method in ("proposals", "adapted", "propagate", "crf"):
        q = proj / "results/demo/quality" / method
        summary = json.loads((q / "summary.json").read_text())
        assert 0.0 <= summary["alignment_mean"] <= 1.0 and summary["backbone"] == "mobilenetv2_imagenet"
        assert 0.0 <= summary["agreement_mean"] <= 1.0 and summary["flag_on"] == "agreement"
        assert method not in summary["scores"]["agreement"]          # a method is not compared with itself
        rows = list(csv.DictReader(open(q / "per_frame.csv")))
        assert len(rows) == 12 and {r["sequence"] for r in rows} == {"demo-01", "demo-02"}
        assert sum(int(r["flagged"]) for r in rows) == summary["flagged_frames"]
        assert all((float(r["agreement"]) < summary["flag_below"]) == (r["flagged"] == "1") for r in rows)
        assert (q / "per_sequence.png").stat().st_size > 0


def test_tuner_picks_by_alignment_and_leaves_the_stores_alone(project):
    proj, env, _ = project
    store = proj / "data/demo/proposals/demo-01.zarr"
    before = json.loads((store / "zarr.json").read_text())["attributes"]["content_sha256"]
    def scored():
        return {p: p.read_bytes() for d in ("quality", "eval") for p in (proj / "data/demo" / d).rglob("*.json")}

    before_scores = scored()
    _run([sys.executable, "-m", "pipeline.cli", "tune", "proposals.threshold", "0.2", "0.5", "--dataset", "demo",
          "--method", "proposals"], proj, env)
    rep = json.loads((proj / "results/demo/tune/proposals.threshold.json").read_text())
    assert [r["value"] for r in rep["rows"]] == [0.2, 0.5] and rep["reran"] == ["proposals"]
    assert rep["choice"] == max(rep["rows"], key=lambda r: r["alignment"])["value"]
    assert all(r["J"] is not None for r in rep["rows"])            # the demo has ground truth: J beside it
    assert rep["rows"][0]["alignment"] != rep["rows"][1]["alignment"]
    _run([sys.executable, "-m", "pipeline.cli", "tune", "proposals.threshold", "0.2", "0.5", "--dataset", "demo",
          "--method", "proposals", "--score", "agreement"], proj, env)
    by_agree = json.loads((proj / "results/demo/tune/proposals.threshold.by_agreement.json").read_text())
    assert by_agree["score"] == "agreement" and rep["score"] == "alignment"
    assert all(r["agreement"] is not None for r in by_agree["rows"])
    # adapted and propagate are made from the proposals: their stores hold the current threshold's masks
    assert by_agree["agree_with"] == ["proposals", "motion_baseline"]
    assert by_agree["choice"] == max(by_agree["rows"], key=lambda r: r["agreement"])["value"]
    assert [r["alignment"] for r in by_agree["rows"]] == [r["alignment"] for r in rep["rows"]]   # same candidates
    assert json.loads((store / "zarr.json").read_text())["attributes"]["content_sha256"] == before
    assert scored() == before_scores                              # the project's own scores untouched too
    # a killed tuner keeps its finished candidates: a report holding only the first is resumed
    path = proj / "results/demo/tune/proposals.threshold.json"
    assert rep["complete"] is True and len(rep["setup"]) == 64
    path.write_text(json.dumps({**rep, "rows": rep["rows"][:1], "complete": False, "choice": None}))
    log = _run([sys.executable, "-m", "pipeline.cli", "tune", "proposals.threshold", "0.2", "0.5", "--dataset", "demo",
                "--method", "proposals"], proj, env)
    assert log.count("finished by an earlier run") == 1 and log.count('{"value": 0.5') == 1
    again = json.loads(path.read_text())
    assert again["complete"] is True and again["setup"] == rep["setup"] and again["rows"][0] == rep["rows"][0]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rep["rows"]]   # the rerun candidate: same scores
    # another setup (a --set) is not mistaken for it
    log = _run([sys.executable, "-m", "pipeline.cli", "tune", "proposals.threshold", "0.2", "--dataset", "demo",
                "--method", "proposals", "--set", "proposals.batch=2"], proj, env)
    assert "finished by an earlier run" not in log


def test_artifacts_chain_provenance(project):
    proj, _, _ = project
    from pipeline.core.store import lineage, open_artifact

    art = open_artifact(proj / "data/demo/motion_baseline/demo-01.zarr", "motion_baseline")
    lin = lineage(art)
    assert list(lin) == ["motion_baseline", "flow", "frames"]
    assert lin["frames"]["params"]["frames"]["size"] == [48, 80]
    flow = open_artifact(proj / "data/demo/flow/demo-01.zarr")
    assert art.provenance["inputs"]["flow"]["content_sha256"] == flow.attrs["content_sha256"]


def test_proposals_stage_runs_from_the_committed_checkpoint(project):
    proj, _, _ = project
    from pipeline.core.store import open_artifact

    art = open_artifact(proj / "data/demo/proposals/demo-01.zarr", "proposals")
    labels = art.require("labels", dtype="uint8", dims=("frame", "y", "x"))
    assert labels.shape == (6, 48, 80) and int(labels[...].max()) <= 3
    assert art["amodal"].shape == (6, 3, 48, 80)
    summary = json.loads((proj / "results/demo/metrics/proposals/summary.json").read_text())
    assert summary["lineage"]["proposals"]["params"]["proposals"]["checkpoint"].endswith(".pt")


def test_refinement_stages_run_and_name_the_backbone(project):
    """features -> selector -> exemplars -> corrector -> crf run from the committed checkpoints, and the
    backbone that made the features reaches the metrics files of the refined masks."""
    proj, _, _ = project
    from pipeline.core.store import open_artifact

    ex = open_artifact(proj / "data/demo/exemplars/demo-01.zarr", "exemplars")
    t = yaml.safe_load((proj / "params.yaml").read_text())["corrector"]["t"]
    assert ex["frames"].shape == (3, t)
    corr = open_artifact(proj / "data/demo/corrector/demo-01.zarr", "corrector")
    assert corr["labels"].shape == (6, 48, 80) and corr["probs"].shape == (6, 3, 48, 80)
    crf = open_artifact(proj / "data/demo/crf/demo-01.zarr", "crf")
    assert crf["labels"].shape == (6, 72, 128)                 # original resolution
    for method in ("corrector", "crf"):
        summary = json.loads((proj / f"results/demo/metrics/{method}/summary.json").read_text())
        bb = summary["lineage"]["features"]["backbone"]
        assert bb["name"] == "mobilenetv2_imagenet" and bb["self_supervised"] is False and bb["substitute"] is True
        assert len(bb["weights_sha256"]) == 64
    ad = open_artifact(proj / "data/demo/adapted/demo-01.zarr", "adapted")     # the adapted corrector
    assert ad["labels"].shape == (6, 48, 80) and ad.attrs["proposal_inputs"] is False
    assert ad.attrs["checkpoint"]["train"]["adapted"]["iterations"] == 3
    assert json.loads((proj / "results/demo/adapt/metrics.json").read_text())["iterations"] == 3
    sel = json.loads((proj / "results/demo/selection/summary.json").read_text())
    assert sel["lineage"]["features"]["backbone"]["name"] == "mobilenetv2_imagenet"


def test_propagation_stages_run_on_the_committed_mamp_checkpoint(project):
    """propagate_gt (first-frame ground truth) and propagate (exemplars) write mask stores that the
    evaluator reads, at the propagation size, naming the self-supervised MAMP backbone."""
    proj, _, _ = project
    from pipeline.core.store import open_artifact

    gt = open_artifact(proj / "data/demo/propagate_gt/demo-01.zarr", "propagate_gt")
    assert gt["labels"].shape == (6, 72, 128) and gt.attrs["backbone"]["name"] == "mamp"
    assert gt.attrs["self_supervised"] is True and gt.attrs["backbone"]["substitute"] is False
    frames = open_artifact(proj / "data/demo/frames/demo-01.zarr", "frames")
    assert (gt["labels"][0] > 0).sum() > 0 and gt["probs"].shape[1] == frames.attrs["num_objects"]
    pr = open_artifact(proj / "data/demo/propagate/demo-01.zarr", "propagate")
    assert pr["probs"].shape == (6, 3, 72, 128) and pr["labels"].dtype == "uint8"
    for method in ("propagate_gt", "propagate"):
        summary = json.loads((proj / f"results/demo/metrics/{method}/summary.json").read_text())
        assert 0.0 <= summary["J_mean"] <= 1.0
    # propagation from the first frame's ground truth finds the objects well above chance
    assert json.loads((proj / "results/demo/metrics/propagate_gt/summary.json").read_text())["J_mean"] > 0.3


def _given_frames_hold_the_reference_masks(proj, ref: str) -> int:
    """At each slot's exemplar frames the propagate store holds exactly that slot's mask of the
    reference store (resized to the propagation size); returns how many (slot, frame) pairs were checked."""
    import cv2
    import numpy as np

    from pipeline.core.store import open_artifact

    n = 0
    for seq in ("demo-01", "demo-02"):
        pr = open_artifact(proj / f"data/demo/propagate/{seq}.zarr", "propagate")
        assert ref in pr.attrs["provenance"]["inputs"] and ref in pr.attrs["references"]
        labels = np.asarray(open_artifact(proj / f"data/demo/{ref}/{seq}.zarr", ref)["labels"][...])
        ex = np.asarray(open_artifact(proj / f"data/demo/exemplars/{seq}.zarr", "exemplars")["frames"][...])
        probs = np.asarray(pr["probs"][...], np.float32)
        H, W = probs.shape[2:]
        for k in range(ex.shape[0]):
            for f in ex[k][ex[k] >= 0]:
                want = cv2.resize((labels[f] == k + 1).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
                assert np.array_equal(probs[f, k], want.astype(np.float32)), (seq, ref, k, f)
                n += 1
    return n


def test_propagate_references_key_switches_the_propagated_masks_and_reruns_only_what_follows(project):
    """`propagate.references`: the exemplar frames carry the named store's masks (the default's, then
    the other of proposals / adapted); the switch reruns propagate and its readers, never the oracle."""
    proj, env, _ = project
    default = yaml.safe_load((proj / "params.yaml").read_text())["propagate"]["references"]
    assert _given_frames_hold_the_reference_masks(proj, default) > 0
    other = "proposals" if default != "proposals" else "adapted"
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "before propagate.references", "--allow-empty"], proj, env)
    ran, out = _exp_run(proj, env, f"propagate.references={other}")
    assert "propagate" in ran and ran <= {"propagate", "fuse", "crf", "metrics", "export", "quality"}, ran
    assert "propagate_gt: 2 of 2 sequences up to date" in out, out[-3000:]
    assert _given_frames_hold_the_reference_masks(proj, other) > 0


ADAPT_STAGES = ("adapted", "fuse", "metrics", "export", "quality")


def _exp_run(proj, env, assignment):
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", assignment], proj, env)
    return set(re.findall(r"Running stage '([^']+)'", out)), out


@pytest.mark.parametrize("assignment,first,allowed", [
    ("corrector.t=15", "exemplars", ("exemplars", "corrector", "crf", "propagate") + ADAPT_STAGES),
    # propagate reads the adapted masks (propagate.references: adapted), so it follows the corrector too
    ("corrector.window=5", "corrector", ("corrector", "crf", "propagate") + ADAPT_STAGES),
])
def test_corrector_params_rerun_only_what_they_affect(project, assignment, first, allowed):
    proj, env, _ = project
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "before " + assignment, "--allow-empty"], proj, env)
    ran, out = _exp_run(proj, env, assignment)
    assert first in ran, out
    assert ran <= set(allowed), sorted(ran - set(allowed))
    assert not ran & {"frames", "flow", "proposals", "features", "selector", "propagate_gt"}


def test_eval_param_reruns_only_metrics_stages(project):
    proj, env, _ = project
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "commit", "-qm", "ran"], proj, env)
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", "eval.bound_th=0.02"], proj, env)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran, out
    assert ran == {"metrics"}, ran
    status = _run([str(BIN / "dvc"), "status"], proj, env)
    assert "up to date" in status


def test_motionseg_run_on_a_video_file_and_again_from_cache(project, tmp_path):
    """`motionseg run VIDEO -o OUT`: palette masks, overlays and a report, through the same stages and
    cache (a second run recomputes nothing); `segment()` returns the same masks."""
    import cv2
    import numpy as np
    from PIL import Image

    proj, env, _ = project
    video = tmp_path / "my clip.mp4"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    for t in range(6):
        img = bg.copy()
        img[20:40, 10 + 5 * t:30 + 5 * t] = (30, 30, 220)
        wr.write(img)
    wr.release()
    out = tmp_path / "out"
    # --preset none: the project's tiny params.yaml as it is (the cpu preset would bring RAFT in)
    log = _run([str(BIN / "motionseg"), "run", str(video), "-o", str(out), "--preset", "none"], proj, env)
    assert "sequence(s)" in log
    pngs = sorted((out / "my-clip" / "masks").glob("*.png"))
    assert len(pngs) == 6 and Image.open(pngs[0]).mode == "P" and Image.open(pngs[0]).size == (96, 64)
    assert (out / "my-clip" / "overlay.png").exists() and (out / "my-clip" / "overlay.mp4").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["final_stage"] == "crf" and report["sequences"][0]["frames"] == 6
    assert "| my-clip | 6 |" in (out / "report.md").read_text()
    assert (proj / "datasets" / "run-my-clip" / "dataset.yaml").exists()
    _run([str(BIN / "motionseg"), "run", str(video), "-o", str(out), "--preset", "none"], proj, env)
    again = json.loads((out / "report.json").read_text())
    assert all(v["ran"] == 0 for v in again["stages"].values()), again["stages"]
    code = ("import sys, numpy as np; from pipeline.api import segment; m = segment(sys.argv[1], preset='none'); "
            "print(m.shape, m.dtype)")
    shown = _run([sys.executable, "-c", code, str(video)], proj, env)
    assert "(6, 64, 96) uint8" in shown


def test_motionseg_run_rejects_bad_input_in_one_line(project, tmp_path):
    proj, env, _ = project
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    r = subprocess.run([str(BIN / "motionseg"), "run", str(bad)], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "notes.txt" in r.stderr
