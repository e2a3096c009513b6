"""The code a stage runs, found from its imports: DVC deps and fingerprints come from here, so the
declared deps of ``dvc.yaml`` cannot drift from the code (a test checks the committed files)."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ROOT = PACKAGE_DIR.parent


def module_file(mod: str) -> Path | None:
    parts = mod.split(".")
    if parts[0] != "pipeline":
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


@lru_cache(maxsize=None)
def direct_imports(mod: str) -> frozenset[str]:
    """``pipeline.*`` modules imported anywhere in ``mod`` (function-level imports included)."""
    f = module_file(mod)
    if f is None:
        return frozenset()
    pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("pipeline")}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                base = ".".join(up + ([n.module] if n.module else []))
            if not base.startswith("pipeline"):
                continue
            out.add(base)
            for a in n.names:              # `from pipeline import metrics`: a submodule
                if module_file(f"{base}.{a.name}") is not None:
                    out.add(f"{base}.{a.name}")
    # a module implies its parent packages' __init__
    for m in list(out):
        parts = m.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return frozenset(m for m in out if module_file(m) is not None)


def closure(mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(direct_imports(m) - seen)
    return seen


@lru_cache(maxsize=None)
def is_marker(f: Path) -> bool:
    """A package marker: an ``__init__.py`` holding only a docstring and dunder constants
    (``__version__``). It runs no code a stage's output could depend on, so it is not a dep (a bare
    version bump reruns nothing; the stores keep the version that made them)."""
    if f.name != "__init__.py":
        return False
    for i, n in enumerate(ast.parse(f.read_text()).body):
        if i == 0 and isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant):
            continue
        if isinstance(n, ast.ImportFrom) and n.module == "__future__":
            continue
        if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                and all(isinstance(t, ast.Name) and t.id.startswith("__") for t in n.targets)):
            continue
        return False
    return True


def code_files(mod: str) -> list[Path]:
    """The files of a module's import closure, package markers left out (:func:`is_marker`)."""
    return sorted(f for f in {module_file(m) for m in closure(mod)} if not is_marker(f))


def stage_code_files(stage_name: str) -> list[Path]:
    from pipeline.stages.registry import stage_module

    return code_files(stage_module(stage_name))


def dep_paths(files: list[Path]) -> list[str]:
    """Files grouped by component: ``pipeline/<package>`` folders, single modules as files."""
    out = set()
    for f in files:
        rel = f.relative_to(ROOT)
        parts = rel.parts
        if len(parts) >= 3 and parts[1] != "stages":
            out.add("/".join(parts[:2]))
        else:
            out.add(rel.as_posix())
    return sorted(out)


def stage_deps(stage_name: str) -> list[str]:
    return dep_paths(stage_code_files(stage_name))
