"""Mask corrector: model (pipeline.corrector.model), training (corrector_train), inference
(pipeline.corrector.infer) on tiny synthetic stores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _params import section
import torch

from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.corrector.infer import (
    correct_sequence,
    label_map,
    window_starts,
    write_corrected,
)
from pipeline.corrector.model import (
    Corrector,
    CorrectorConfig,
    load_corrector,
    slot_attention_weights,
)
from pipeline.corrector.batch import collate_windows
from pipeline.corrector.train import (
    CorrectorClipDataset,
    corrector_loss,
    export_checkpoint,
    oracle_exemplars,
    train_corrector,
)
from pipeline.exemplars.scoring import exemplar_weights

pytestmark = pytest.mark.usefixtures("torch_one_thread")

T_VID, H, W, C, h, w, K = 12, 32, 48, 8, 4, 6, 3
BACKBONE = "testnet"


def tiny_model_cfg(**kw) -> dict:
    cfg = dict(d_model=32, num_heads=4, num_layers=1, ffn_dim=64, base_channels=8, recon_hidden=32,
               max_frames=8)
    cfg.update(kw)
    return cfg


def tiny_model(seed: int = 0, **kw) -> Corrector:
    torch.manual_seed(seed)
    return Corrector(CorrectorConfig.cpu(token_dim=C, token_hw=(h, w), **tiny_model_cfg(**kw))).eval()


# --------------------------------------------------------------------------- tiny stores
def _video(rng: np.random.Generator, T: int = T_VID):
    """Two coloured squares moving over a textured background; proposals are shifted / eroded /
    missing copies of the GT (slot 0 = object 1, slot 1 = object 0, slot 2 empty); tokens encode
    the colour and the objects' area fractions at token resolution."""
    O = 2
    colours = np.array([[230, 40, 40], [40, 60, 230]], np.uint8)
    bg = rng.integers(90, 160, (H, W, 3)).astype(np.uint8)
    rgb = np.repeat(bg[None], T, 0)
    modal = np.zeros((T, O, H, W), bool)
    pos = np.array([[4.0, 4.0], [16.0, 26.0]])
    vel = np.array([[1.0, 1.5], [-0.5, -1.0]])
    for t in range(T):
        for o in range(O):
            y, x = (pos[o] + vel[o] * t).astype(int)
            modal[t, o, max(y, 0):y + 10, max(x, 0):x + 12] = True
        modal[t, 1] &= ~modal[t, 0]                       # object 0 in front
        for o in range(O):
            rgb[t][modal[t, o]] = colours[o]
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for slot, o in ((0, 1), (1, 0)):
            m = modal[t, o].copy()
            kind = rng.integers(4)
            if kind == 1:
                m = np.roll(m, int(rng.integers(-3, 4)), axis=1)
            elif kind == 2:
                m[: int(rng.integers(H // 2, H))] = False
            elif kind == 3 and t % 5 == 0:
                m[:] = False
            labels[t][m & (labels[t] == 0)] = slot + 1
    tok = np.zeros((T, C, h, w), np.float32)
    area = modal.reshape(T, O, h, H // h, w, W // w).mean(axis=(3, 5))
    tok[:, :O] = area * 3
    tok[:, O:O + 3] = rgb.reshape(T, h, H // h, w, W // w, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2) / 255.0
    tok[:, O + 3:] = rng.normal(0, 0.1, (T, C - O - 3, h, w))
    return rgb, modal, labels, tok.astype(np.float16)


def write_split(root: Path, names: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "render").mkdir(parents=True, exist_ok=True)
    for name in names:
        rgb, modal, labels, tok = _video(rng)
        with ArtifactWriter(root / "render" / f"{name}.zarr", stage="synth") as wr:
            wr.create("rgb", rgb.shape, "uint8", ("frame", "y", "x", "channel"))[...] = rgb
            wr.create("modal", modal.shape, "bool", ("frame", "object", "y", "x"))[...] = modal
        with ArtifactWriter(root / "proposals" / f"{name}.zarr", stage="proposals") as wr:
            wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
            wr.attrs["num_objects"] = K
        with ArtifactWriter(root / "features" / f"{name}.zarr", stage="features") as wr:
            wr.create("tokens", tok.shape, "float16", ("frame", "channel", "y", "x"))[...] = tok
            wr.attrs["backbone"] = BACKBONE
    (root / "render" / "index.json").write_text(json.dumps({"videos": [{"store": f"{n}.zarr"} for n in names]}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    write_split(root / "train", ["train-00000", "train-00001"], 0)
    write_split(root / "val", ["val-00000"], 1)
    return root


def _inputs(B=1, T=3, E=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(rgb=torch.randn(B, T, 3, H, W, generator=g),
                masks=(torch.rand(B, T, K, H, W, generator=g) > 0.5).float(),
                tokens=torch.randn(B, T, C, h, w, generator=g),
                ex_tokens=torch.randn(B, E, C, h, w, generator=g),
                ex_masks=(torch.rand(B, E, K, H, W, generator=g) > 0.5).float(),
                ex_weight=torch.rand(B, E, K, generator=g) + 0.1,
                ex_frame=torch.arange(E)[None].repeat(B, 1) * 2,
                tgt_frame=torch.arange(T)[None].repeat(B, 1) + 1)


# --------------------------------------------------------------------------- attention
def test_slot_attention_normalises_queries_then_keys():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 9, generator=g) * 3                 # [.., Q, N]
    w0 = slot_attention_weights(logits, renormalize=False)
    assert torch.allclose(w0.sum(-2), torch.ones(2, 9), atol=1e-6)  # softmax over queries
    w = slot_attention_weights(logits, eps=1e-8)
    assert torch.allclose(w.sum(-1), torch.ones(2, 5), atol=1e-6)   # then renormalised over keys
    assert torch.allclose(w, (w0 + 1e-8) / (w0 + 1e-8).sum(-1, keepdim=True), atol=1e-7)
    # a key that no query may see, and a query that may see no key
    mask = torch.ones(2, 5, 9, dtype=torch.bool)
    mask[:, :, 3] = False
    mask[1, 2, :] = False
    w0 = slot_attention_weights(logits, mask, renormalize=False)
    w = slot_attention_weights(logits, mask)
    assert torch.isfinite(w).all() and torch.isfinite(w0).all()
    assert (w[:, :, 3] == 0).all() and (w0[:, :, 3] == 0).all()
    assert (w[1, 2] == 0).all()
    ok_rows = torch.ones(2, 5, dtype=torch.bool)
    ok_rows[1, 2] = False
    assert torch.allclose(w.sum(-1)[ok_rows], torch.ones(int(ok_rows.sum())), atol=1e-6)
    cols = w0.sum(-2)
    assert torch.allclose(cols[0, torch.arange(9) != 3], torch.ones(8), atol=1e-6)


def test_queries_never_attend_to_their_own_frame():
    model = tiny_model(num_layers=2)
    x = _inputs(T=3, E=5)
    x["ex_frame"] = torch.tensor([[0, 2, 3, 7, -1]])               # frames 2 and 3 are also target frames
    x["tgt_frame"] = torch.tensor([[2, 3, 4]])
    x["ex_weight"][:, 4] = 0
    with torch.no_grad():
        out = model(**x, need_weights=True)
    hw = h * w
    for we in out["attn_exemplar"]:                                 # [B, heads, T, Q, E*hw]
        we = we.view(*we.shape[:4], 5, hw)
        assert (we[:, :, 0, :, 1] == 0).all() and (we[:, :, 1, :, 2] == 0).all()   # own frame: exactly 0
        assert (we[..., 4, :] == 0).all()                                          # padding
        assert (we[:, :, 2, :, 1] > 0).all() and (we[:, :, 0, :, 2] > 0).all()    # other frames: attended
        assert torch.allclose(we.sum((-1, -2)), torch.ones(we.shape[:4]), atol=1e-5)
    # one target frame (no other frame to leak through self-attention) whose frame is an exemplar
    # frame that does not initialise any query: its tokens must not change the output at all
    y = _inputs(T=1, E=3, seed=1)
    y["ex_frame"], y["tgt_frame"] = torch.tensor([[2, 5, 9]]), torch.tensor([[5]])
    y["ex_weight"][:, 1] = 0
    with torch.no_grad():
        a = model(**y)
        y["ex_tokens"] = y["ex_tokens"].clone()
        y["ex_tokens"][:, 1] = torch.randn(C, h, w) * 5
        b = model(**y)
        y["ex_tokens"][:, 0] = torch.randn(C, h, w) * 5               # another frame's tokens do matter
        c = model(**y)
    assert torch.equal(a["mask_logits"], b["mask_logits"]) and torch.equal(a["recon"], b["recon"])
    assert not torch.allclose(a["mask_logits"], c["mask_logits"])


def test_output_shapes_and_paper_parameter_count(capsys):
    model = tiny_model()
    x = _inputs(B=2, T=3, E=4)
    x["ex_masks"] = x["ex_masks"][..., ::8, ::8]                     # token-resolution exemplar masks work too
    with torch.no_grad():
        out = model(**x)
    Q = K + 4
    assert out["mask_logits"].shape == (2, 3, K, H, W)
    assert out["recon"].shape == (2, 3, C, h, w)
    assert out["alpha"].shape == (2, 3, Q, h, w)
    assert torch.allclose(out["alpha"].sum(2), torch.ones(2, 3, h, w), atol=1e-5)
    assert out["maps"].shape == (2, 3, K, 4, h, w)
    # no exemplars at all: empty-object queries, still finite
    x0 = dict(x, ex_tokens=x["ex_tokens"][:, :0], ex_masks=x["ex_masks"][:, :0], ex_weight=x["ex_weight"][:, :0],
              ex_frame=x["ex_frame"][:, :0])
    with torch.no_grad():
        assert torch.isfinite(model(**x0)["mask_logits"]).all()
    n = Corrector(CorrectorConfig.paper(token_dim=384)).param_count()
    with capsys.disabled():
        print(f"\ncorrector paper preset (token_dim 384): {n / 1e6:.2f}M trainable parameters (paper 16.2M)")
    assert 15.0e6 < n < 17.0e6
    with pytest.raises(ValueError, match="tokens"):
        model(**dict(x, tokens=torch.randn(2, 3, C + 1, h, w)))


# --------------------------------------------------------------------------- windows
class _Const(torch.nn.Module):
    """Stand-in with the corrector's interface, recording the windows it sees."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.cfg = CorrectorConfig.cpu(token_dim=C)
        self.calls = []

    def forward(self, rgb, masks, tokens, ex_tokens, ex_masks, ex_weight, ex_frame, tgt_frame):
        self.calls.append(tgt_frame[0].tolist())
        return {"mask_logits": (masks * 2 - 1) * 5 + self.p}


@pytest.mark.parametrize("T", [1, 6, 7, 8, 13, 14, 20])
def test_windowing_covers_every_frame_exactly_once(T):
    starts = window_starts(T, 7)
    assert starts[0] == 0 and min(T, starts[-1] + 7) == T
    assert all(b - a <= 7 for a, b in zip(starts, starts[1:]))
    rng = np.random.default_rng(T)
    rgb = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    labels = rng.integers(0, K + 1, (T, H, W)).astype(np.uint8)
    tokens = rng.normal(size=(T, C, h, w)).astype(np.float16)
    frames = np.full((K, 3), -1, np.int32)
    frames[0, :min(3, T)] = np.arange(min(3, T))
    scores = np.where(frames >= 0, 0.1, np.inf).astype(np.float32)
    model = _Const()
    info: dict = {}
    got = list(correct_sequence(model, rgb, labels, tokens, frames, scores, window=7, device="cpu", info=info))
    assert [f.t for f in got] == list(range(T))
    assert all(len(c) == min(7, T) for c in model.calls)
    assert info["fallback"] == [1, 2]
    for f in got:   # the stand-in reproduces the proposal, fallback objects are the proposal
        assert np.array_equal(f.labels, labels[f.t]) and f.probs.dtype == np.float16 and f.probs.shape == (K, H, W)


def test_exemplar_weights_and_label_map():
    fr = np.array([[3, 5, -1], [-1, -1, -1]])
    sc = np.array([[0.0, 1.0, np.inf], [np.inf] * 3])
    assert np.allclose(exemplar_weights(fr, sc), [[1.0, 0.5, 0.0], [0, 0, 0]])
    p = torch.tensor([[[0.2, 0.7]], [[0.6, 0.4]]])                # [K=2, 1, 2]
    assert label_map(p).tolist() == [[2, 1]]


# --------------------------------------------------------------------------- training
def test_oracle_exemplars_skip_empty_proposals(data):
    ds = CorrectorClipDataset(data / "train", window=4, t=5, seed=0)
    vid = ds.video(0)
    labels = np.asarray(vid.proposals["labels"][...])
    frames, weights = ds.oracle(0)
    assert frames.shape == (K, 5)
    for k in range(K):
        for f in frames[k][frames[k] >= 0]:
            assert (labels[f] == k + 1).any()
    assert (frames[2] == -1).all() and (weights[2] == 0).all()     # slot 2 is always empty
    s = ds[3]
    assert s["rgb"].shape == (4, 3, H, W) and s["tokens"].shape == (4, C, h, w)
    E = len(s["ex_frame"])
    assert s["ex_masks"].shape == (E, K, h, w) and s["ex_weight"].shape == (E, K)
    assert torch.equal(ds[3]["ex_frame"], s["ex_frame"]) and ds[3]["start"] == s["start"]


def test_tiny_corrector_overfits_one_clip(data):
    ds = CorrectorClipDataset(data / "train", window=4, t=5, seed=0)
    batch = collate_windows([ds[1]])
    model = tiny_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    args = [batch[k] for k in ("rgb", "masks", "tokens", "ex_tokens", "ex_masks", "ex_weight", "ex_frame",
                               "tgt_frame")]
    losses = []
    for _ in range(60):
        out = model(*args)
        loss, _ = corrector_loss(out, batch["targets"], batch["tokens"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    print(f"overfit loss {losses[0]:.4f} -> {losses[-1]:.4f} ({losses[0] / losses[-1]:.1f}x)")
    assert losses[-1] * 3 <= losses[0], losses[::10]


def _train_cfg(data: Path, **kw) -> dict:
    cfg = section("train_corrector", preset="cpu", model=tiny_model_cfg(), train_split=str(data / "train"), val_split=str(data / "val"),
               window=4, t=5, batch_size=2, lr=2e-3, warmup_iters=2, decay_every=5, iterations=6, ckpt_every=2,
               val_every=3, val_clips=2, log_every=1, seed=3, device="cpu", threads=1, time_budget_s=None)
    cfg.update(kw)
    return cfg


def test_train_resume_export_load_round_trip(data, tmp_path):
    out = tmp_path / "run"
    m = train_corrector(_train_cfg(data, iterations=4), out, resume=True, progress=False)
    assert m["iterations"] == 4 and m["token_dim"] == C and m["backbone"] == BACKBONE
    for key in ("val_J_proposals", "val_J_corrected", "val_J_gain", "loss_mask", "loss_recon", "loss_alpha"):
        assert m[key] is not None and np.isfinite(m[key]), key
    m2 = train_corrector(_train_cfg(data), out, resume=True, progress=False)
    assert m2["resumed_from"] == 4 and m2["iterations"] == 6
    with open(out / "train_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 6
    with pytest.raises(ArtifactError, match="cannot resume"):
        train_corrector(_train_cfg(data, lr=1e-2), out, resume=True, progress=False)

    dest = tmp_path / "corrector_cpu.pt"
    info = export_checkpoint(out / "last.pt", dest)
    assert info["encoding"] == "fp16"
    model, linfo = load_corrector(dest, "cpu")
    assert linfo["token_dim"] == C and linfo["backbone"] == BACKBONE and linfo["train"]["window"] == 4
    assert torch.load(dest, weights_only=True)["format"] == "motionseg-corrector/1"
    ref = Corrector(model.cfg)
    ref.load_state_dict(torch.load(out / "last.pt", weights_only=False)["model"])
    ref.eval()
    ds = CorrectorClipDataset(data / "val", window=4, t=5, seed=1, video_order="cycle")
    b = collate_windows([ds[0]])
    args = [b[k] for k in ("rgb", "masks", "tokens", "ex_tokens", "ex_masks", "ex_weight", "ex_frame", "tgt_frame")]
    with torch.no_grad():
        pa, pb = torch.sigmoid(model(*args)["mask_logits"]), torch.sigmoid(ref(*args)["mask_logits"])
    assert (pa - pb).abs().max() < 2e-2

    # errors: missing file, not a corrector checkpoint
    with pytest.raises(FileNotFoundError, match="corrector checkpoint not found"):
        load_corrector(tmp_path / "nope.pt")
    torch.save({"format": "motionseg-oclr/1"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an exported corrector checkpoint"):
        load_corrector(tmp_path / "other.pt")


def test_write_corrected_store_and_backbone_check(data, tmp_path):
    model = tiny_model(max_frames=8)
    rng = np.random.default_rng(5)
    rgb, modal, labels, tok = _video(rng, T=9)
    d = tmp_path / "ds"
    with ArtifactWriter(d / "frames/s.zarr", stage="frames") as wr:
        wr.create("rgb", rgb.shape, "uint8", ("frame", "y", "x", "channel"))[...] = rgb
    with ArtifactWriter(d / "proposals/s.zarr", stage="proposals") as wr:
        wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
    bb = {"name": BACKBONE, "weights_sha256": "ab" * 32, "dim": C}      # as pipeline.features records it
    with ArtifactWriter(d / "features/s.zarr", stage="features") as wr:
        wr.create("tokens", tok.shape, "float16", ("frame", "channel", "y", "x"))[...] = tok
        wr.attrs["backbone"] = bb
    frames, weights, _ = oracle_exemplars(labels, modal[:, [1, 0, 0]] & np.array([1, 1, 0], bool)[:, None, None],
                                          t=4)
    with ArtifactWriter(d / "exemplars/s.zarr", stage="exemplars") as wr:
        wr.write("frames", frames, ("object", "rank"))
        wr.write("scores", np.where(frames >= 0, 1 - weights, np.inf).astype(np.float32), ("object", "rank"))
    info = {"token_dim": C, "backbone": BACKBONE, "file_sha256": "0" * 64, "weights_sha256": "1" * 64,
            "encoding": "fp16", "model_config": model.cfg.to_dict(), "train": {"window": 7}, "path": "x.pt"}
    args = [d / "frames/s.zarr", d / "proposals/s.zarr", d / "features/s.zarr", d / "exemplars/s.zarr"]
    run = write_corrected(*args, d / "corrector/s.zarr", model, info, {"checkpoint": "x.pt", "window": 7,
                                                                       "threshold": 0.5}, device="cpu")
    assert run["windows"] == [[0, 7], [2, 9]] and run["fallback"] == [2]
    art = open_artifact(d / "corrector/s.zarr", stage="corrector")
    assert art["probs"].shape == (9, K, H, W) and art["probs"].dtype == np.float16
    assert art["labels"].shape == (9, H, W) and art["labels"].dtype == np.uint8
    assert art.attrs["backbone"] == bb
    assert set(art.provenance["inputs"]) == {"frames", "proposals", "features", "exemplars", "checkpoint"}
    probs = np.asarray(art["probs"][...])
    assert np.array_equal(probs[:, 2], (labels == 3).astype(np.float16))     # fallback: the proposal
    with pytest.raises(ArtifactError, match="backbone 'testnet' with 8 channels.*'dino_vits8'"):
        write_corrected(*args, d / "corrector/t.zarr", model, dict(info, backbone="dino_vits8"), {}, device="cpu")
    with pytest.raises(ArtifactError, match="weights sha256"):
        write_corrected(*args, d / "corrector/t.zarr", model, dict(info, backbone_sha256="cd" * 32), {},
                        device="cpu")
    write_corrected(*args, d / "corrector/t.zarr", model, dict(info, backbone_sha256="ab" * 32), {}, device="cpu")
