"""The pipeline's stages, each one step over one dataset (see :mod:`pipeline.stages.base`).

Inference stages in graph order (:data:`ORDER`), each defined in its own module as ``STAGE``; the
training stages (``synth``, ``train_*``, ...) are scripts of ``training/dvc.yaml`` in this folder
too. Run one with ``python -m pipeline.stages STAGE DATASET [VARIANT]``; ``dvc repro`` does it
for every stage whose inputs changed.
"""

from __future__ import annotations

import importlib

from pipeline.stages.base import Stage

#: stage name -> (module, attribute), in graph order
ORDER: dict[str, tuple[str, str]] = {
    "demo_data": ("demo_data", "STAGE"),
    "frames": ("frames", "STAGE"),
    "flow": ("flow", "STAGE"),
    "motion_baseline": ("motion_baseline", "STAGE"),
    "proposals": ("proposals", "STAGE"),
    "features": ("features", "STAGE"),
    "selector": ("selector", "STAGE"),
    "exemplars": ("exemplars", "STAGE"),
    "corrector": ("corrector", "STAGE"),
    "adapt_corrector": ("adapt_corrector", "STAGE"),
    "adapted": ("corrector", "ADAPTED_STAGE"),
    "propagate_gt": ("propagate", "GT_STAGE"),
    "propagate": ("propagate", "STAGE"),
    "crf": ("crf", "STAGE"),
    "selection_eval": ("selection_eval", "STAGE"),
    "metrics": ("metrics", "STAGE"),
    "export": ("export", "STAGE"),
}


def stage_module(name: str) -> str:
    if name not in ORDER:
        raise KeyError(f"unknown stage {name!r} (one of: {', '.join(ORDER)})")
    return f"pipeline.stages.{ORDER[name][0]}"


def get_stage(name: str) -> Stage:
    mod = importlib.import_module(stage_module(name))
    return getattr(mod, ORDER[name][1])
