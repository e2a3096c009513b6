"""Compare two metrics folders (``results/<dataset>/metrics`` of two runs) as Markdown tables.

    python bench/compare_metrics.py BEFORE AFTER [--method crf] [--worst 5] [--out FILE.json]

Prints, for every method present in both, J and J&F before and after; then the per-sequence J of
``--method`` for the ``--worst`` sequences of the *before* run (and of the after run), before and
after. Reads only ``<method>/summary.json`` and ``<method>/per_sequence.csv`` (the metrics stage's
files); ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def _summary(folder: Path, method: str) -> dict | None:
    p = folder / method / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


def _per_sequence(folder: Path, method: str) -> dict[str, float]:
    with open(folder / method / "per_sequence.csv", newline="") as f:
        return {r["sequence"]: float(r["J_mean"]) for r in csv.DictReader(f)}


def compare(before: Path, after: Path, method: str, worst: int) -> dict:
    methods = sorted(m.name for m in before.iterdir() if (m / "summary.json").exists()
                     and (after / m.name / "summary.json").exists())
    if not methods:
        raise SystemExit(f"no method has a summary.json in both {before} and {after}")
    rows = {}
    for m in methods:
        b, a = _summary(before, m), _summary(after, m)
        rows[m] = {"J_before": b["J_mean"], "J_after": a["J_mean"], "JF_before": b["JF_mean"], "JF_after": a["JF_mean"]}
    out = {"before": str(before), "after": str(after), "methods": rows}
    if method in methods:
        jb, ja = _per_sequence(before, method), _per_sequence(after, method)
        common = sorted(set(jb) & set(ja))
        out["worst"] = {
            "method": method,
            "of_before": [(s, jb[s], ja[s]) for s in sorted(common, key=lambda s: jb[s])[:worst]],
            "of_after": [(s, jb[s], ja[s]) for s in sorted(common, key=lambda s: ja[s])[:worst]],
        }
    return out


def to_markdown(res: dict) -> str:
    lines = ["| method | J before | J after | J&F before | J&F after |", "|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | {r['J_before']:.3f} | {r['J_after']:.3f} | {r['JF_before']:.3f} | {r['JF_after']:.3f} |")
    if "worst" in res:
        w = res["worst"]
        for key, title in (("of_before", "worst before"), ("of_after", "worst after")):
            lines += ["", f"{w['method']}, the {len(w[key])} {title} (per-sequence J):", "",
                      "| sequence | J before | J after |", "|---|---|---|"]
            lines += [f"| {s} | {b:.3f} | {a:.3f} |" for s, b, a in w[key]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--method", default="crf", help="method whose worst sequences are listed (default crf)")
    ap.add_argument("--worst", type=int, default=5, help="how many sequences (default 5)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    a = ap.parse_args()
    for d in (a.before, a.after):
        if not d.is_dir():
            raise SystemExit(f"{d}: not a folder")
    res = compare(a.before, a.after, a.method, a.worst)
    print(to_markdown(res))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
