"""Stage names -> the module and attribute defining each stage, in graph order."""

from __future__ import annotations

import importlib

from pipeline.core.stage import Stage

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
    "quality": ("quality", "STAGE"),
    "export": ("export", "STAGE"),
}


def stage_module(name: str) -> str:
    if name not in ORDER:
        raise KeyError(f"unknown stage {name!r} (one of: {', '.join(ORDER)})")
    return f"pipeline.stages.{ORDER[name][0]}"


def get_stage(name: str) -> Stage:
    mod = importlib.import_module(stage_module(name))
    return getattr(mod, ORDER[name][1])
