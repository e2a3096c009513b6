"""Faults under DVC on a tiny dataset whose sequence names have spaces, commas, colons, brackets and
unicode: names go through `motionseg dataset add` and `dvc repro`; a rerun that writes identical
content leaves DVC's hash unchanged (the next stage is skipped); a rerun that fails on a bad parameter
exits non-zero with one line and leaves the previous stores readable."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMES = ["a,b", "x: y", "my clip", "take [2]", "café ü"]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, ok=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _videos(root: Path) -> None:
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
    for name in NAMES:
        fdir, adir = root / "JPEGImages/480p" / name, root / "Annotations/480p" / name
        fdir.mkdir(parents=True)
        adir.mkdir(parents=True)
        for t in range(4):
            img = np.roll(bg, t, axis=1).copy()
            img[20:50, 30 + 6 * t:60 + 6 * t] = (230, 40, 40)
            cv2.imwrite(str(fdir / f"{t:05d}.jpg"), img[..., ::-1])
            m = np.zeros((80, 120), np.uint8)
            m[20:50, 30 + 6 * t:60 + 6 * t] = 255
            Image.fromarray(m).save(adir / f"{t:05d}.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed next to this python")
    proj = tmp_path_factory.mktemp("faults")
    shutil.copytree(ROOT / "pipeline", proj / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["frames"]["size"] = [48, 80]
    params["flow"]["method"] = "dis"
    params["eval"]["methods"] = ["motion_baseline"]     # `dvc repro ...:metrics` runs only flow and the baseline
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / ".gitignore").write_text("/data/*\n/videos/\n")
    _videos(proj / "videos")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MOTIONSEG_ROOT": str(proj),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    _run([sys.executable, "-m", "pipeline.cli", "dataset", "add", "odd", "videos"], proj, env)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        _run(cmd, proj, env)
    out = _run([str(BIN / "dvc"), "repro", "datasets/odd/dvc.yaml:metrics"], proj, env)
    return proj, env, out.stdout + out.stderr


def test_odd_sequence_names_go_through_dvc_repro(project):
    proj, _, _ = project
    rows = list(csv.DictReader(open(proj / "results/odd/metrics/motion_baseline/per_sequence.csv", encoding="utf-8")))
    assert sorted(r["sequence"] for r in rows) == sorted(NAMES)
    assert all(0.0 <= float(r["J_mean"]) <= 1.0 for r in rows)
    for name in NAMES:
        assert (proj / "data/odd/motion_baseline" / f"{name}.zarr" / "zarr.json").exists()


def test_identical_rerun_keeps_dvc_hash_and_skips_the_next_stage(project):
    proj, env, _ = project
    lock = (proj / "datasets/odd/dvc.lock").read_text()
    shutil.rmtree(proj / "data/odd/flow/.done")          # forget the ledger: every sequence is recomputed
    r = _run([str(BIN / "dvc"), "repro", "-f", "-s", "datasets/odd/dvc.yaml:flow"], proj, env)
    assert r.stdout.count("flow: ") >= len(NAMES)        # really recomputed, not skipped
    assert (proj / "datasets/odd/dvc.lock").read_text() == lock
    for stage in ("flow", "motion_baseline"):
        r = _run([str(BIN / "dvc"), "status", f"datasets/odd/dvc.yaml:{stage}"], proj, env)
        assert "up to date" in r.stdout and "changed" not in r.stdout, r.stdout
    r = _run([str(BIN / "dvc"), "repro", "datasets/odd/dvc.yaml:motion_baseline"], proj, env)
    assert "'datasets/odd/dvc.yaml:motion_baseline' didn't change, skipping" in r.stdout + r.stderr


def test_failed_rerun_under_dvc_keeps_previous_stores(project):
    proj, env, _ = project
    from pipeline.core.store import open_artifact

    before = {n: open_artifact(proj / "data/odd/motion_baseline" / f"{n}.zarr").attrs["content_sha256"]
              for n in NAMES}
    f = proj / "datasets/odd/dataset.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["motion_baseline"] = {"model": "bogus"}
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    _run([sys.executable, "-m", "pipeline.cli", "dataset", "sync"], proj, env)
    r = _run([str(BIN / "dvc"), "repro", "datasets/odd/dvc.yaml:motion_baseline"], proj, env, ok=False)
    assert r.returncode != 0
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(ours) == 1 and "bogus" in ours[0], r.stdout + r.stderr
    for n in NAMES:
        art = open_artifact(proj / "data/odd/motion_baseline" / f"{n}.zarr", "motion_baseline")
        assert art.attrs["content_sha256"] == before[n]
        assert art["labels"].shape[0] == 4
