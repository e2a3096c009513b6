"""Keep the code deps of ``training/dvc.yaml`` equal to what its scripts import.

``python -m pipeline.stages.training_deps`` rewrites each stage's ``deps:`` list (the data deps are
kept, the code deps replaced by :func:`pipeline.stages.deps.dep_paths` of the script's imports);
``--check`` only reports, and a test runs it."""

from __future__ import annotations

import re
import sys

import yaml

from pipeline.stages.deps import ROOT, code_files, dep_paths

TRAINING = ROOT / "training" / "dvc.yaml"
_BLOCK = re.compile(r"(?m)^(?P<indent>[ \t]+)cmd: python -m (?P<script>pipeline\.stages\.\w+)[^\n]*\n"
                    r"(?P=indent)deps: \[(?P<deps>[^\]]*)\]")


def code_deps(script: str) -> list[str]:
    mod = script
    return dep_paths(code_files(mod))


def rewrite(text: str) -> str:
    def fix(m: re.Match) -> str:
        old = yaml.safe_load("[" + m.group("deps") + "]")
        data = [d for d in old if not str(d).startswith("pipeline/")]
        new = code_deps(m.group("script")) + data
        ind = m.group("indent")
        items = [f'"{d}"' if "$" in d else d for d in new]
        lines, cur = [], f"{ind}deps: ["
        for i, it in enumerate(items):
            piece = it + (", " if i < len(items) - 1 else "]")
            if len(cur) + len(piece) > 110:
                lines.append(cur.rstrip())
                cur = ind + "       "
            cur += piece
        lines.append(cur)
        return m.group(0)[: m.start("indent") - m.start(0)] + m.group(0).split("\n")[0] + "\n" + "\n".join(lines)
    return _BLOCK.sub(fix, text)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = TRAINING.read_text()
    new = rewrite(text)
    if new != text:
        if check:
            print(f"{TRAINING}: code deps out of date (python -m pipeline.stages.training_deps)")
            return 1
        TRAINING.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
