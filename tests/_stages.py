"""Run one stage on one sequence of a test project, the way the runner does (params from the
project's params.yaml, the dataset named there)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.stages.registry import get_stage
from pipeline.core.stage import Ctx


def run_stage_on(name: str, root: Path, seq: str | None = None, variant: str | None = None):
    params = yaml.safe_load((Path(root) / "params.yaml").read_text())
    params["dataset"].setdefault("protocol", params.get("protocol", "multi"))
    ctx = Ctx(params["dataset"]["name"], params, Path(root), variant)
    st = get_stage(name)
    if st.whole is not None:
        return st.whole(ctx)
    state = st.setup(ctx) if st.setup else None
    return st.run(state, ctx, seq, st.out_dir(ctx) / f"{seq}{st.suffix}")
