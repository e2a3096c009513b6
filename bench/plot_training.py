"""Training-curve pictures of the three models: results/<model>/curves.png from the DVC plot CSVs.

    python bench/plot_training.py            # oclr, selector, corrector (those that exist)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VAL_KEYS = {"oclr": ["val_J_modal", "val_J_amodal"],
            "selector": ["val_AP_selector", "val_AP_selector_soft", "val_AP_temporal", "val_AP_random"],
            "corrector": ["val_J_proposals", "val_J_corrected"]}


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(model: str) -> Path | None:
    d = ROOT / "results" / model
    if not (d / "train_curve.csv").exists():
        return None
    tr = read(d / "train_curve.csv")
    va = read(d / "val_curve.csv") if (d / "val_curve.csv").exists() else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    it = [int(r["iteration"]) for r in tr]
    loss = [float(r["loss"]) for r in tr]
    k = max(1, len(loss) // 100)                              # running mean over ~1% of the run
    smooth = [sum(loss[max(0, i - k):i + 1]) / len(loss[max(0, i - k):i + 1]) for i in range(len(loss))]
    axes[0].plot(it, loss, alpha=0.25, lw=0.8, label="loss")
    axes[0].plot(it, smooth, lw=1.5, label=f"running mean ({k} rows)")
    axes[0].set_xlabel("iteration"), axes[0].set_ylabel("training loss"), axes[0].set_yscale("log")
    axes[0].legend(fontsize=8), axes[0].set_title(f"{model}: training loss")
    for key in VAL_KEYS[model]:
        if va and key in va[0]:
            axes[1].plot([int(r["iteration"]) for r in va], [float(r[key]) for r in va], marker="o", ms=3,
                         label=key)
    axes[1].set_xlabel("iteration"), axes[1].set_title(f"{model}: synthetic validation")
    axes[1].legend(fontsize=8), axes[1].grid(alpha=0.3)
    fig.tight_layout()
    out = d / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for m in sys.argv[1:] or list(VAL_KEYS):
        p = plot(m)
        print(f"{m}: {p or 'no curves'}")
