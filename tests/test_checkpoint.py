"""Exported inference checkpoints (pipeline/core/checkpoint.py): same weights, same bytes."""

from __future__ import annotations

import hashlib

import pytest
import torch

from pipeline.core.checkpoint import read_export, write_export


def _state(bump: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g) + bump, "conv.bias": torch.zeros(4),
            "bn.num_batches_tracked": torch.tensor(7)}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_is_byte_identical_for_identical_weights(tmp_path):
    header = {"model_config": {"width": 4}, "train": {"iterations": 3}}
    a = write_export("toy-v1", _state(), header, tmp_path / "a.pt")
    b = write_export("toy-v1", _state(), header, tmp_path / "b.pt")
    assert _sha(tmp_path / "a.pt") == _sha(tmp_path / "b.pt")      # no time stamp or path inside
    assert a["weights_sha256"] == b["weights_sha256"] and "created_utc" not in a
    write_export("toy-v1", _state(bump=1e-3), header, tmp_path / "c.pt")
    assert _sha(tmp_path / "c.pt") != _sha(tmp_path / "a.pt")


def test_export_roundtrip_fp16_and_checks(tmp_path):
    write_export("toy-v1", _state(), {"model_config": {}}, tmp_path / "a.pt")
    doc = read_export(tmp_path / "a.pt", "toy-v1", "toy", "train one")
    assert doc["encoding"] == "fp16" and doc["state"]["conv.weight"].dtype == torch.float16
    assert torch.equal(doc["state"]["conv.weight"], _state()["conv.weight"].half())
    assert doc["state"]["bn.num_batches_tracked"].item() == 7
    with pytest.raises(ValueError, match="expected 'other-v1'"):
        read_export(tmp_path / "a.pt", "other-v1", "other", "train one")
    with pytest.raises(FileNotFoundError, match="train one"):
        read_export(tmp_path / "missing.pt", "toy-v1", "toy", "train one")
