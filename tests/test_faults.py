"""Bad input and faults give one line naming the culprit and a non-zero exit (issue: nothing silently
wrong): interrupts, stalled downloads, broken checkpoints and weights, bad params, odd frames."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    print(f"\nBAD-INPUT rc={r.returncode} {lines[0]}")       # the table of the closing note: pytest -s | grep
    return lines[0]


# ---------------------------------------------------------------------------------------- a tiny project
@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    """params.yaml + one dataset `t` (two 5-frame videos with masks), frames and DIS flow ingested."""
    p = tmp_path_factory.mktemp("faults_proj")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["frames"]["size"] = [32, 48]
    params["flow"]["method"] = "dis"
    (p / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (p / "checkpoints").symlink_to(ROOT / "checkpoints")
    rng = np.random.default_rng(0)
    for seq in ("s1", "s2"):
        f = p / "videos/JPEGImages/480p" / seq
        a = p / "videos/Annotations/480p" / seq
        f.mkdir(parents=True)
        a.mkdir(parents=True)
        for t in range(5):
            cv2.imwrite(str(f / f"{t:05d}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            m = np.zeros((48, 64), np.uint8)
            m[10:30, 10 + 2 * t:30 + 2 * t] = 255
            Image.fromarray(m).save(a / f"{t:05d}.png")
    _dataset(p, {})
    for stage in ("frames", "flow"):
        r = _stage(p, stage)
        assert r.returncode == 0, r.stderr
    return p


def _dataset(p: Path, overrides: dict) -> None:
    d = p / "datasets/t"
    d.mkdir(parents=True, exist_ok=True)
    doc = {"dataset": {"name": "t", "root": str(p / "videos"), "layout": "davis", "resolution": "480p",
                       "sparse_gt": False, "protocol": "multi"}, **overrides}
    (d / "dataset.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _stage(p: Path, stage: str, env: dict | None = None, timeout: float = 300):
    env = {**os.environ, "MOTIONSEG_ROOT": str(p), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.stages", stage, "t"], cwd=p, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def overrides(proj):
    """Set dataset overrides for one test; restored afterwards."""
    yield lambda o: _dataset(proj, o)
    _dataset(proj, {})


# ------------------------------------------------------------------------------------------- interrupts
def _interrupted(code: str):
    """Run ``code`` (it prints 'ready' then works), send SIGINT, return (process, stderr)."""
    # SIGINT back to its default in the child: a test run started in the background (nohup, `&`) passes an
    # ignored SIGINT down, and Python then installs no KeyboardInterrupt handler
    pr = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert pr.stdout.readline().strip() == "ready"
    pr.send_signal(signal.SIGINT)
    _, err = pr.communicate(timeout=30)
    return pr, err


def test_sigint_exits_130_with_one_line():
    code = ("import sys, time\nfrom pipeline.stages.runner import main\nimport pipeline.stages.runner as R\n"
            "def slow(*a, **k):\n    print('ready', flush=True)\n    time.sleep(60)\n"
            "R.run = slow\nsys.argv = ['x', 'frames', 'demo']\nsys.exit(main())\n")
    pr, err = _interrupted(code)
    assert pr.returncode == 130
    assert err.strip().splitlines() == ["interrupted: nothing half-written was kept; rerun to finish"]


# -------------------------------------------------------------------------------------------- downloads
def test_stalled_download_fails_within_60_s_with_a_message(tmp_path):
    """A server that accepts connections and never answers (both the RAFT archive and pip's index)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    port = srv.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"MOTIONSEG_CACHE": str(tmp_path / "cache"), "PIP_CONFIG_FILE": os.devnull,
                "MOTIONSEG_RAFT_URLS": f"http://127.0.0.1:{port}/models.zip",
                "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple"})
    code = ("import sys\nfrom pipeline.core.runtime import report_errors\n"
            "from pipeline.weights.raft import resolve_raft_weights\n"
            "sys.exit(report_errors(lambda: resolve_raft_weights('raft_large')))\n")
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    finally:
        stop.set()
        for c in held:
            c.close()
        srv.close()
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 60, (took, r.stderr)
    assert "downloading the RAFT authors' models.zip" in r.stderr          # said what it was doing
    assert "no data for 10 s" in r.stderr and "RAFT weights raft-sintel.pth for raft_large not found" in r.stderr


def test_download_shows_progress_and_size(tmp_path, capsys):
    import http.server

    payload = os.urandom(300_000)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    from pipeline.weights.common import download_url

    try:
        out = download_url(f"http://127.0.0.1:{srv.server_address[1]}/w.bin", tmp_path / "w.bin")
    finally:
        srv.shutdown()
    assert out.read_bytes() == payload and not list(tmp_path.glob("*.part*"))
    err = capsys.readouterr().err
    assert "downloading w.bin from http://127.0.0.1" in err and "downloaded" in err and "(0.3 MB)" in err


# ------------------------------------------------------------------------------ weights and checkpoints
def test_corrupted_cached_raft_file_is_one_line(proj, overrides, tmp_path):
    (tmp_path / "raft-sintel.pth").write_bytes(b"not a checkpoint")
    overrides({"flow": {"method": "raft_large"}})
    (proj / "data/t/flow/.done").exists() and [q.unlink() for q in (proj / "data/t/flow/.done").iterdir()]
    r = _stage(proj, "flow", {"MOTIONSEG_CACHE": str(tmp_path)})
    _one_line_error(r, "raft-sintel.pth: sha256", "Delete it and fetch it again")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_broken_checkpoint_is_one_line_naming_the_file(proj, overrides, tmp_path, damage):
    data = bytearray((ROOT / "checkpoints/oclr_cpu.pt").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(255 - b for b in data[mid:mid + 64])
    bad = tmp_path / f"{damage}.pt"
    bad.write_bytes(bytes(data))
    overrides({"proposals": {"checkpoint": str(bad)}})
    r = _stage(proj, "proposals")
    _one_line_error(r, str(bad))


# ------------------------------------------------------------------------------------------------ params
def test_wrong_case_flow_method_is_one_line(proj, overrides):
    overrides({"flow": {"method": "DIS"}})
    r = _stage(proj, "flow")
    _one_line_error(r, "flow.method", "'DIS'", "did you mean 'dis'?")


def test_frame_gap_too_long_is_one_line(proj, overrides):
    overrides({"flow": {"gap": 9}})
    r = _stage(proj, "flow")
    _one_line_error(r, "s1.zarr: 5 frames, too short for frame gap 9", "flow.gap")


def _edited_params(proj, edit):
    """Run the flow stage with params.yaml edited by ``edit(params)``; the file is restored."""
    good = (proj / "params.yaml").read_text()
    params = yaml.safe_load(good)
    edit(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return _stage(proj, "flow")
    finally:
        (proj / "params.yaml").write_text(good)


def test_unknown_params_key_is_an_error_with_a_suggestion(proj):
    r = _edited_params(proj, lambda p: p["corrector"].update(tt=5))
    _one_line_error(r, "unknown key 'corrector.tt'", "did you mean 'corrector.t'?")


def test_misspelled_required_key_names_the_key(proj):
    r = _edited_params(proj, lambda p: p["flow"].update(methd=p["flow"].pop("method")))
    _one_line_error(r, "'flow.methd'", "did you mean 'flow.method'?")


def test_unknown_protocol_in_evaluate_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", str(tmp_path), str(tmp_path),
                        "--protocol", "foo"], cwd=ROOT, capture_output=True, text=True)
    _one_line_error(r, "foo")


# ------------------------------------------------------------------------------------------------ frames
def _one_seq(root: Path, frames: list[bytes], ext=".jpg") -> "object":
    from pipeline.core.config import DatasetConfig

    d = root / "JPEGImages/480p/s"
    d.mkdir(parents=True)
    for t, data in enumerate(frames):
        (d / f"{t:05d}{ext}").write_bytes(data)
    return DatasetConfig(name="x", root=str(root))


def _jpeg(img: np.ndarray, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_corrupt_jpeg_that_still_decodes_is_an_error(tmp_path):
    from pipeline.core.io import InputError, discover, ingest_sequence

    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    good = _jpeg(img)
    bad = bytearray(good)
    bad[len(bad) // 2: len(bad) // 2 + 40] = b"\x00" * 40        # damaged entropy-coded data
    ds = _one_seq(tmp_path, [good, bytes(bad), good])
    with pytest.raises(InputError, match=r"00001.jpg: corrupt image data"):
        ingest_sequence(ds, "s", tmp_path / "o.zarr", (16, 24), progress=False)
    assert discover(ds, "s").num_frames == 3


def test_exif_rotated_frames_are_upright_and_say_so(tmp_path):
    """A phone JPEG stored landscape with EXIF orientation 6 (rotate 90 clockwise to display) is ingested
    as displayed; a mask made for the stored pixels gets a message that mentions the rotation."""
    from pipeline.core.io import InputError, ingest_sequence
    from pipeline.core.store import open_artifact

    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :10] = 255                                            # a bright left band (stored pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    ds = _one_seq(tmp_path / "a", [_jpeg(img, exif=exif)] * 3)
    art = open_artifact(ingest_sequence(ds, "s", tmp_path / "o.zarr", (24, 16), progress=False), "frames")
    assert art.attrs["original_size"] == [60, 40]                 # displayed: portrait
    top = np.asarray(art["rgb_full"][0])[:10].mean()
    assert top > 200                                              # the band is now at the top
    ds = _one_seq(tmp_path / "b", [_jpeg(img, exif=exif)] * 3)
    adir = tmp_path / "b/Annotations/480p/s"
    adir.mkdir(parents=True)
    for t in range(3):
        Image.fromarray(np.zeros((40, 60), np.uint8)).save(adir / f"{t:05d}.png")
    with pytest.raises(InputError, match="EXIF orientation"):
        ingest_sequence(ds, "s", tmp_path / "o2.zarr", (24, 16), progress=False)


def test_missing_resolution_folder_is_an_error_not_a_sequence(tmp_path):
    from pipeline.core.config import DatasetConfig, list_sequences

    (tmp_path / "JPEGImages/480p/s").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no .*JPEGImages/1080p folder.*this dataset has 480p"):
        list_sequences(DatasetConfig(name="x", root=str(tmp_path), resolution="1080p"))
    assert list_sequences(DatasetConfig(name="x", root=str(tmp_path))) == ["s"]


def test_stale_staging_folders_are_cleaned_by_the_next_run(proj):
    out = proj / "data/t/frames"
    junk = [out / ".s1.zarr.tmp-deadbeef", out / ".s2.zarr.old-cafe0000"]
    for j in junk:
        (j / "c").mkdir(parents=True)
        (j / "c" / "0").write_bytes(b"x" * 1000)
    r = _stage(proj, "frames")
    assert r.returncode == 0, r.stderr
    assert not any(j.exists() for j in junk)


@pytest.mark.parametrize("args, needle", [(["3"], "error: bad n 3"), (["x"], "Invalid value for 'n'")])
def test_typer_stage_errors_are_one_line(args, needle):
    """Training stages run through run_stage (typer): a user error and a bad command line are one line."""
    code = ("from pipeline.core.runtime import run_stage\n"
            "def main(n: int):\n    raise ValueError(f'bad n {n}')\nrun_stage(main)\n")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    line = _one_line_error(r)
    assert needle in line and r.returncode == 1


def test_sigint_in_a_typer_stage_exits_130_with_one_line():
    code = ("import time\nfrom pipeline.core.runtime import run_stage\n"
            "def main():\n    print('ready', flush=True)\n    time.sleep(60)\nrun_stage(main)\n")
    pr, err = _interrupted(code)
    assert pr.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted: nothing half-written was kept; rerun to finish"
