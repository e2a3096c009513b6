"""The project's params.yaml sections as test configs: trainers have no defaults of their own, so a test
starts from the documented values and overrides what it needs."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def section(name: str, **overrides) -> dict:
    cfg = copy.deepcopy(yaml.safe_load(PARAMS.read_text())[name])
    unknown = set(overrides) - set(cfg)
    assert not unknown, f"params.yaml section {name!r} has no key(s) {sorted(unknown)}"
    cfg.update(overrides)
    return cfg
