"""How far can a user trust the label-free tuner? One table over every key tuned on a dataset.

For each ``results/<ds>/tune/<key>[.by_agreement].json`` the tuner wrote (a ``.by_agreement`` run carries
both scores and wins over the alignment-only one), per score (alignment, agreement): the value it picks,
the value true J picks, the J lost by trusting the score, and the Spearman correlation between the score
and J over the candidates.

    python bench/tune_summary.py synthval --out results/synthval/tune/summary.json

Prints a Markdown table (docs/results.md keeps the figures) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

SCORES = ("alignment", "agreement")


def summarize(report: dict) -> dict:
    rows = [r for r in report["rows"] if r.get("J") is not None]
    best = max(rows, key=lambda r: r["J"])
    out = {"key": report["key"], "scored_stage": report["scored_stage"], "current": report["current"],
           "candidates": [r["value"] for r in rows], "best_J_value": best["value"], "best_J": best["J"],
           "agree_with": report.get("agree_with")}
    for s in SCORES:
        if any(r.get(s) is None for r in rows):
            continue
        pick = max(rows, key=lambda r: r[s])
        rho = spearmanr([r[s] for r in rows], [r["J"] for r in rows])[0]   # two candidates: +-1, nan on a tie
        out[s] = {"pick": pick["value"], "J": pick["J"], "J_lost": round(best["J"] - pick["J"], 4),
                  "spearman": None if rho != rho else round(float(rho), 2)}
    return out


def load(dataset: str, root: Path) -> list[dict]:
    reports: dict[str, dict] = {}
    folder = root / "results" / dataset / "tune"
    for f in sorted(folder.glob("*.json")):
        if f.name == "summary.json":
            continue
        r = json.loads(f.read_text())
        if len(r.get("rows", [])) < 2:     # one candidate (a single measured setting) chooses nothing
            continue
        # a .by_agreement run carries both scores: it wins over an alignment-only run of the same key
        if r.get("key") and (r["key"] not in reports or f.name.endswith(".by_agreement.json")):
            reports[r["key"]] = r
    return [summarize(r) for r in reports.values()]


def markdown(rows: list[dict]) -> str:
    lines = ["| key (scored stage) | candidates | J picks | alignment picks: J lost, Spearman | "
             "agreement picks: J lost, Spearman |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["key"]):
        cells = []
        for s in SCORES:
            x = r.get(s)
            cells.append("-" if x is None else f"{x['pick']} ({x['J_lost']:.3f}, {x['spearman']})")
        cands = ", ".join(str(c) for c in r["candidates"])
        lines.append(f"| `{r['key']}` ({r['scored_stage']}) | {cands} | {r['best_J_value']} ({r['best_J']:.3f}) | "
                     + " | ".join(cells) + " |")
    n = {s: [r[s] for r in rows if s in r] for s in SCORES}
    for s in SCORES:
        if n[s]:
            ok = sum(x["J_lost"] <= 0.01 for x in n[s])
            pos = sum((x["spearman"] or 0) > 0 for x in n[s])
            lines.append(f"\n{s}: within 0.01 J of the best on {ok} of {len(n[s])} keys, positive Spearman on {pos}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = load(a.dataset, Path(__file__).resolve().parents[1])
    print(markdown(rows))
    if a.out:
        a.out.write_text(json.dumps({"dataset": a.dataset, "keys": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
