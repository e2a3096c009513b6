"""Shared plumbing for stage entry points: error reporting and atomic folders."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

from pipeline.core.io import InputError
from pipeline.core.store import ArtifactError

# Errors that mean "bad input / missing prerequisite": reported as one clear
# line, no traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, ArtifactError, FileNotFoundError,
                                                KeyError)


def report_errors(fn: Callable[[], Any]) -> int:
    """Run ``fn()``; a user error becomes one ``error: ...`` line and exit status 1, Ctrl-C a
    one-line message and 130. ``MOTIONSEG_DEBUG=1`` keeps the traceback."""
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; rerun to finish", file=sys.stderr)
        return 130
    except USER_ERRORS + (ValueError, ImportError) as e:
        if os.environ.get("MOTIONSEG_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 1


def run_stage(main: Callable) -> None:
    """Run a stage's typer command with :func:`report_errors`: a user error or a bad command line is one
    ``error:`` line and exit 1, Ctrl-C exit 130. (Typer raises its own exception classes, not click's:
    a usage error is recognised by its ``format_message``.)"""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    code = 0

    def go() -> None:
        nonlocal code
        try:
            rc = app(standalone_mode=False)
        except typer.Abort:
            raise KeyboardInterrupt from None
        except typer.Exit as e:
            rc = e.exit_code
        except Exception as e:  # noqa: BLE001
            if hasattr(e, "format_message") and hasattr(e, "exit_code"):     # usage error (bad option)
                raise ValueError(e.format_message()) from None
            raise
        code = int(rc or 0) if isinstance(rc, int) else 0
        if code == 130:           # typer turned Ctrl-C into Exit(130)
            raise KeyboardInterrupt

    rc = report_errors(go)
    sys.exit(rc or code)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
