"""The layout's promises: layering contracts, no import cycles, and DVC files that say exactly what
the code does (generated pipelines in sync, every stage's deps covering the modules it imports)."""

from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline.stages.registry import ORDER, get_stage, stage_module
from pipeline.stages.deps import closure, direct_imports, is_marker, module_file
from pipeline.stages.dvcgen import datasets, dvc_file, render, sync

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_pass():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def _module_graph() -> dict[str, set[str]]:
    mods = {m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    return {m: {d for d in direct_imports(m) if d in mods and not m.startswith(d + ".")} for m in mods}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    assert _cycles(_module_graph()) == []


def test_generated_pipelines_are_in_sync():
    assert "demo" in datasets() and dvc_file("demo") == ROOT / "dvc.yaml"
    stale = sync(check=True)
    assert stale == [], f"run `motionseg dataset sync`: {stale}"


def _stages(doc: dict) -> dict[str, dict]:
    out = {}
    for name, st in (doc.get("stages") or {}).items():
        out[name] = st.get("do", st)
    return out


def _cmd_modules(cmd: str) -> list[str]:
    parts = cmd.split()
    assert parts[:2] == ["python", "-m"], cmd
    if parts[2] == "pipeline.stages":
        return [stage_module(s) for s in parts[3].split(",")]
    return [parts[2]]


def _covered(f: Path, deps: list[str]) -> bool:
    rel = f.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("path", ["dvc.yaml", "training/dvc.yaml"] +
                         [f"datasets/{d}/dvc.yaml" for d in ("davis2016", "synthval")])
def test_declared_deps_cover_the_imported_modules(path):
    doc = yaml.safe_load((ROOT / path).read_text())
    stages = _stages(doc)
    assert stages
    for name, st in stages.items():
        files = {f for mod in _cmd_modules(st["cmd"]) for f in map(module_file, closure(mod)) if not is_marker(f)}
        missing = sorted(f.relative_to(ROOT).as_posix() for f in files if not _covered(f, st["deps"]))
        assert not missing, f"{path}:{name} imports code it does not declare: {missing}"


def test_only_package_markers_are_left_out_of_deps(tmp_path):
    cases = {"doc": '"""A package."""\n', "version": '"""A package."""\n\n__version__ = "0.1.0"\n',
             "future": 'from __future__ import annotations\n__author__ = "x"\n',
             "import": '"""A package."""\nfrom pipeline.core import io\n',
             "code": '__version__ = "1"\nX = 2\n', "call": '__version__ = str(1)\n'}
    got = {}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(text)
        got[name] = is_marker(tmp_path / name / "__init__.py")
    assert got == {"doc": True, "version": True, "future": True, "import": False, "code": False, "call": False}
    (tmp_path / "mod.py").write_text('"""Only a docstring, but a module."""\n')
    assert not is_marker(tmp_path / "mod.py")
    assert is_marker(ROOT / "pipeline" / "__init__.py") and is_marker(ROOT / "pipeline" / "stages" / "__init__.py")


def test_every_inference_stage_is_in_the_demo_pipeline():
    from pipeline.stages.registry import OPTIONAL, SWITCHED

    def steps(doc: dict) -> set[str]:                      # the steps each DVC stage's command runs
        return {s for st in _stages(doc).values() for s in st["cmd"].split()[3].split(",")}

    demo = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    # IMAS: only where a methods list names it; fuse: the default crf.input; propagate_gt: eval.methods
    # selection_eval: there because the demo scores methods made from the selector's choice
    assert steps(demo) == set(ORDER) - OPTIONAL - set(SWITCHED) | {"fuse", "propagate_gt"}
    nested = yaml.safe_load(render("davis2016"))
    # the demo's generator only in the demo; DAVIS has IMAS; the OCLR adaptation (a switched stage: only where
    # its key is set) is the second round's first step, in the second round's pipeline; so is the IMAS
    # self-training, which takes train_imas's place there, and the exemplar round's reselection (exemplars's)
    assert steps(nested) == set(ORDER) - {"demo_data", "adapt_oclr", "imas_self_train", "reselect"}
    assert "adapt_oclr" not in steps(demo)
    st = _stages(yaml.safe_load(render("davis2016_st")))
    assert steps({"stages": st}) == {"reselect", "corrector", "adapt_corrector", "adapted", "propagate",
                                     "imas_self_train", "imas", "fuse", "crf", "foreground", "metrics", "quality",
                                     "export"}
    assert "data/davis2016_st/imas_train/imas.pt" in st["imas"]["deps"]
    assert "data/davis2016/propagate" in st["reselect"]["deps"] and "data/davis2016_st/exemplars" in st["corrector"]["deps"]
    r2 = _stages(yaml.safe_load(render("davis2016_r2")))
    assert "data/davis2016/crf" in r2["adapt_oclr"]["deps"] and "data/davis2016/flow" in r2["adapt_oclr"]["deps"]
    assert "data/davis2016_r2/adapt_oclr/oclr_adapted.pt" in r2["proposals"]["deps"]
    # a combined stage: the label-based evaluations in one DVC stage
    assert _stages(demo)["metrics"]["cmd"].split()[3] == "selection_eval,metrics"
    assert all(st.get("wdir") == "../.." for st in _stages(nested).values())
    # a combined stage runs its steps in graph order, and a step runs in one DVC stage only
    assert _stages(demo)["propagate"]["cmd"].split()[3] == "propagate_gt,propagate"
    assert "propagate_gt" not in _stages(demo)
    # without ground truth to evaluate (eval.methods not naming it) the oracle is left out: propagate alone
    synthval = _stages(yaml.safe_load(render("synthval")))
    assert synthval["propagate"]["cmd"].split()[3] == "propagate"


def test_every_committed_second_round_adapts_the_oclr_its_source_used():
    """A round's ``adapt_oclr.checkpoint`` must be the source's ``proposals.checkpoint`` (the stage refuses
    otherwise); a default changed in params.yaml must not leave a committed round behind (as happened when
    params.yaml's proposals moved to the RAFT-trained OCLR and a DIS dataset's round kept the other)."""
    from pipeline.core.stage import Ctx, load_dataset_params
    from pipeline.stages.adapt_oclr import _check_source
    from pipeline.stages.registry import used_stages

    rounds = []
    for name in datasets(ROOT):
        p = load_dataset_params(name, ROOT)
        if "adapt_oclr" in used_stages(p, name, ROOT):
            _check_source(Ctx(name, p, ROOT), p["adapt_oclr"])
            rounds.append(name)
    assert {"davis2016_r2", "synthval_r2"} <= set(rounds)


def test_no_stage_depends_on_itself_through_a_params_key_naming_a_stage():
    """A key naming a mask stage (adapt.pseudo_labels, crf.input) may be set to any earlier mask stage
    with `dvc exp run -S`; no DVC stage may then read its own output (a combined stage whose later step
    feeds an input of an earlier stage in between would)."""
    from pipeline.core.stage import Ctx, load_dataset_params
    from pipeline.stages.registry import COMBINED

    ctx = Ctx("davis2016", load_dataset_params("davis2016", ROOT), ROOT)
    for host, steps in COMBINED.items():
        between = list(ORDER)[list(ORDER).index(steps[0]):list(ORDER).index(steps[-1]) + 1]
        outs = {(get_stage(s).out or s) for s in steps}
        for name in between:
            if name in steps:
                continue
            reads = set(get_stage(name).input_dirs(ctx)) | {i.strip("{}") for i in get_stage(name).inputs}
            assert not reads & outs, f"{name} sits between the steps of {host} and reads {reads & outs}"
            assert not any(i.startswith("{") for i in get_stage(name).inputs), \
                f"{name} sits between the steps of {host} and reads a stage named by params"


@pytest.mark.parametrize("key,value,message", [
    ("propagate.references", "crf", "propagate.references: 'crf' is not one of proposals, corrector, adapted"),
    ("propagate.references", "motion_baseline", "not one of"),
    ("crf.input", "nosuch", "crf.input: 'nosuch' is not a stage that runs before crf"),
    ("crf.input", "export", "is not a stage that runs before crf"),
    ("imas.flow", "motion_baseline", "imas.flow: 'motion_baseline' is not one of flow, imas_flow"),
])
def test_a_key_naming_a_store_is_checked_when_the_graph_is_built(key, value, message):
    """A bad value of a key naming the store a stage reads is an error naming the key before anything runs
    (not a cycle in dvc.yaml, nor a 'missing input' once the stage has started)."""
    from pipeline.core.config import load_params
    from pipeline.stages.registry import used_stages

    p = load_params()
    p["quality"]["methods"] = ["imas"]            # train_imas in the graph
    assert "train_imas" in used_stages(p, "demo")
    sec, leaf = key.split(".")
    p[sec][leaf] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        used_stages(p, "demo")


def test_a_combined_stage_declares_the_union_of_its_steps():
    from pipeline.core.stage import dataset_overrides, _leaves, load_dataset_params
    from pipeline.stages.dvcgen import combined_entry, stage_entry

    merged, keys = load_dataset_params("davis2016", ROOT), _leaves(dataset_overrides("davis2016", ROOT))
    one = [stage_entry(n, "davis2016", merged, keys, "datasets/davis2016/dataset.yaml", True)
           for n in ("propagate_gt", "propagate")]
    both = combined_entry(one)
    assert both["cmd"] == "python -m pipeline.stages propagate_gt,propagate davis2016"
    assert both["wdir"] == "../.."
    for k in ("deps", "outs"):
        assert [x for e in one for x in e[k] if x not in both[k]] == []
        assert len(both[k]) == len({str(x) for x in both[k]})            # each once
    assert [o for o in both["outs"]] == [{"data/davis2016/propagate_gt": {"persist": True}},
                                         {"data/davis2016/propagate": {"persist": True}}]
    assert "mamp" in both["params"]
    assert combined_entry(one[:1]) is one[0]
    # a training step and the inference with what it trained: what the first writes is no dep of the pair,
    # and a key the first declares as a whole section is not repeated key by key
    two = [stage_entry(n, "davis2016", merged, keys, "datasets/davis2016/dataset.yaml", True)
           for n in ("adapt_corrector", "adapted")]
    assert "data/davis2016/adapt/corrector_adapted.pt" in two[1]["deps"] and "adapt.lr" in two[1]["params"]
    pair = combined_entry(two)
    assert pair["cmd"] == "python -m pipeline.stages adapt_corrector,adapted davis2016"
    assert [d for e in two for d in e["deps"] if d not in pair["deps"]] == ["data/davis2016/adapt/corrector_adapted.pt"]
    dropped = [k for e in two for k in e["params"] if isinstance(k, str) and k not in pair["params"]]
    assert dropped and all(k.startswith("adapt.") for k in dropped)
    with pytest.raises(ValueError, match="which a later step writes"):      # the pair the other way round
        combined_entry(two[::-1])
    assert "pipeline/stages/adapted.py" in pair["deps"] and "pipeline/stages/adapt_corrector.py" in pair["deps"]
    assert "adapt" in pair["params"] and not [k for k in pair["params"] if str(k).startswith("adapt.")]
    assert {"corrector.threshold", "corrector.device"} <= {k for k in pair["params"] if isinstance(k, str)}
    assert [next(iter(o)) for o in pair["outs"]] == ["data/davis2016/adapt", "results/davis2016/adapt",
                                                     "data/davis2016/adapted"]


def test_every_parameter_is_documented_in_params_yaml():
    """params.yaml is the one place parameters are documented: every key with a value carries a
    comment on its line, the line above, or a continuation comment line below."""
    import re

    lines = (ROOT / "params.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z_]\w*):\s*(.*)$", line)
        if not m or m.group(2) == "" or m.group(2).startswith("#"):
            continue            # a section header (documented by its block comment)
        above = lines[i - 1].strip() if i else ""
        below = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if "#" not in m.group(2) and not above.startswith("#") and not below.startswith("#"):
            undocumented.append(f"{i + 1}: {line.strip()}")
    assert not undocumented, undocumented


def test_sync_never_learns_params_keys_from_a_users_edit(tmp_path):
    """A misspelled key added to params.yaml stays an error (`motionseg dataset sync` reports it too): only
    `--schema` (developers) rewrites pipeline/core/params_keys.txt."""
    import shutil

    import yaml

    from pipeline.core.config import check_param_keys, known_param_keys

    root = tmp_path / "p"
    (root / "pipeline" / "core").mkdir(parents=True)
    shutil.copy(ROOT / "pipeline/core/params_keys.txt", root / "pipeline/core/params_keys.txt")
    shutil.copytree(ROOT / "datasets", root / "datasets")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corrector"]["tt"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(KeyError, match="unknown key 'corrector.tt'"):
        sync(root)
    assert (root / "pipeline/core/params_keys.txt").read_text() == (ROOT / "pipeline/core/params_keys.txt").read_text()
    with pytest.raises(KeyError, match="corrector.tt"):
        check_param_keys(params, root / "params.yaml", known_param_keys())


def test_tuner_reruns_the_stages_a_key_reaches_up_to_the_scored_one():
    from pipeline.core.stage import Ctx, load_dataset_params
    from pipeline.stages.tune import affected

    ctx = Ctx("demo", load_dataset_params("demo", ROOT), ROOT)
    assert affected("proposals.threshold", "proposals", ctx) == ["proposals"]
    # crf reads the fusion of the adapted corrector (adapted with the proposals as pseudo-labels,
    # adapt.pseudo_labels) and the propagated exemplars
    assert affected("corrector.t", "crf", ctx) == ["exemplars", "adapt_corrector", "adapted", "propagate", "fuse", "crf"]
    assert affected("mamp.given_refs", "propagate", ctx) == ["propagate"]
    assert affected("flow.iters", "motion_baseline", ctx) == ["flow", "motion_baseline"]
    assert affected("crf", "crf", ctx) == ["crf"]
    assert affected("crf.iterations", "proposals", ctx) == []


def test_tuner_trains_from_scratch_when_the_copied_state_cannot_be_resumed(tmp_path, monkeypatch):
    import pipeline.stages.tune as tune_mod
    from pipeline.core.store import ArtifactError
    from pipeline.train.scaffold import ResumeError, refuse_resume

    calls = []

    def fake_run(stage, ctx):               # a trainer that refuses a state made with another config
        calls.append(copied.exists())
        if copied.exists():
            refuse_resume(copied / "last.pt", ["lr: 0.001 -> 0.002"], "Delete it.")

    monkeypatch.setattr(tune_mod, "run", fake_run)
    stage = get_stage("train_imas")
    copied = tmp_path / "imas_train"
    copied.mkdir()
    (copied / "last.pt").write_bytes(b"state")
    logs = []
    tune_mod.run_from_copy(stage, None, copied, logs.append)
    assert calls == [True, False] and not copied.exists() and "from scratch" in logs[0]
    copied.mkdir()                          # without a copy the refusal is the user's to see
    with pytest.raises(ResumeError, match=r"cannot resume, it was trained with a different config \(lr: 0.001"):
        tune_mod.run_from_copy(stage, None, None, logs.append)

    def other_error(stage, ctx):
        raise ArtifactError("frames: missing (cannot resume)")      # not a ResumeError, whatever it says

    monkeypatch.setattr(tune_mod, "run", other_error)
    with pytest.raises(ArtifactError, match="missing"):
        tune_mod.run_from_copy(stage, None, copied, logs.append)
    assert copied.exists()                  # any other error leaves the copy alone


def test_every_trainer_refuses_a_resume_with_the_one_resume_error():
    """The tuner tells "train this candidate from scratch" from any other failure by the class alone, so no
    trainer may say "cannot resume" with another exception (every ``raise X(...)`` whose message holds it)."""
    import ast
    import importlib

    from pipeline.train.scaffold import ResumeError

    for mod in ("oclr.train", "selector.train", "mamp.train"):      # the names the trainers export
        assert importlib.import_module(f"pipeline.{mod}").ResumeError is ResumeError, mod
    bad, seen = [], 0
    for f in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    "cannot resume" in ast.unparse(node.exc):
                seen += 1
                if ast.unparse(node.exc.func) != "ResumeError":
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node.exc.func)}")
    assert not bad and seen >= 2          # scaffold.refuse_resume and the OCLR's "fine-tuned from another" case


def test_a_stage_over_no_methods_is_left_out_of_dvc_yaml():
    from pipeline.core.stage import load_dataset_params
    from pipeline.stages.dvcgen import stage_entry

    merged = load_dataset_params("demo", ROOT)
    assert stage_entry("metrics", "demo", merged, [], "datasets/demo/dataset.yaml", False) is not None
    merged["eval"]["methods"] = []                 # a dataset without ground truth
    assert stage_entry("metrics", "demo", merged, [], "datasets/demo/dataset.yaml", False) is None
    from pipeline.stages.registry import used_stages

    names = used_stages(merged, "demo", ROOT)        # nor the selection AP, which needs it as well
    assert "selection_eval" not in names and "metrics" in names and "selector" in names
    for methods, has in ((["motion_baseline", "proposals"], False), (["crf"], True), (["adapted"], True)):
        merged["eval"]["methods"] = methods          # the selection AP with what the selector feeds, only
        assert ("selection_eval" in used_stages(merged, "demo", ROOT)) is has, methods


def test_tuner_measures_agreement_only_with_stores_it_has(tmp_path):
    from pipeline.core.stage import Ctx, load_dataset_params
    from pipeline.stages.tune import scoring_params

    params = load_dataset_params("demo", ROOT)
    params["quality"].update(agree_with=["proposals", "adapted", "imas"], flag_on="agreement")
    ctx = Ctx("demo", params, tmp_path)
    for q in ("a", "b"):
        (ctx.store("proposals", q)).mkdir(parents=True)
    (ctx.store("adapted", "a")).mkdir(parents=True)      # adapted lacks video b
    logs = []
    out = scoring_params(params, ctx, ["train_imas", "imas"], "imas", ["a", "b"], logs.append)
    assert out["quality"]["agree_with"] == ["proposals", "imas"] and out["quality"]["flag_on"] == "agreement"
    assert "without adapted" in logs[0] and params["quality"]["agree_with"] == ["proposals", "adapted", "imas"]
    # nothing but the scored stage left: frames are flagged on alignment
    out = scoring_params(params, ctx, ["imas"], "imas", ["a", "c"], logs.append)
    assert out["quality"]["agree_with"] == ["imas"] and out["quality"]["flag_on"] == "alignment"
    # a stage the candidates rewrite counts as present; all present: the params are returned as they are
    assert scoring_params(params, ctx, ["adapted", "imas"], "imas", ["a", "b"], logs.append) is params
    assert len(logs) == 2


def test_tuner_leaves_out_references_the_key_changes_but_the_candidates_do_not_rerun(tmp_path):
    from pipeline.core.stage import Ctx, load_dataset_params
    from pipeline.stages.tune import affected, reached, scoring_params

    params = load_dataset_params("demo", ROOT)
    ctx = Ctx("demo", params, ROOT)
    # corrector.t picks exemplars: the corrector scored on its own is reached through exemplars, and so are
    # the stages after it that it does not feed (adaptation, propagation from the exemplars, the CRF)
    assert affected("corrector.t", "corrector", ctx) == ["exemplars", "corrector"]
    hit = reached("corrector.t", ctx)
    assert {"exemplars", "corrector", "adapt_corrector", "adapted", "propagate", "crf"} <= hit
    assert not hit & {"frames", "flow", "proposals", "features", "selector", "motion_baseline"}
    params["quality"].update(agree_with=["proposals", "adapted", "propagate", "motion_baseline"], flag_on="agreement")
    tctx = Ctx("demo", params, tmp_path)
    for s in ("proposals", "adapted", "propagate", "motion_baseline"):
        tctx.store(s, "a").mkdir(parents=True)
    logs = []
    stale = sorted(hit - {"exemplars", "corrector"})
    out = scoring_params(params, tctx, ["exemplars", "corrector"], "corrector", ["a"], logs.append, stale)
    # adapted and propagate hold the masks of the current corrector.t: every candidate would be pulled to it
    assert out["quality"]["agree_with"] == ["proposals", "motion_baseline"]
    assert logs == ["agreement measured without adapted, propagate (the key changes them; their stores hold "
                    "the current value's masks)"]
    # the same stores scored for a key that does not reach them: all kept
    assert scoring_params(params, tctx, ["crf"], "crf", ["a"], logs.append, []) is params


def test_tuner_refuses_what_would_change_its_own_yardstick():
    from pipeline.stages.tune import tune

    with pytest.raises(ValueError, match="scored the same way"):
        tune("demo", "features.backbone", ["mamp"], root=ROOT)
    with pytest.raises(ValueError, match="scored the same way"):
        tune("demo", "proposals.threshold", [0.2], root=ROOT, overrides={"features.batch_size": 4})
    # fuse reads the alignment knobs, which are also the score's: tuning them would move the yardstick
    with pytest.raises(ValueError, match="quality"):
        tune("demo", "quality.threshold", [0.6, 0.8], root=ROOT, target="fuse")
    with pytest.raises(ValueError, match="no candidate"):
        tune("demo", "proposals.threshold", [], root=ROOT)


def test_sync_drops_lock_entries_of_stages_no_longer_in_the_pipeline(tmp_path):
    from pipeline.stages.dvcgen import prune_lock

    lock = tmp_path / "dvc.lock"
    kept = ("schema: '2.0'\nstages:\n  frames:\n    cmd: python -m pipeline.stages frames demo\n    deps:\n"
            "    - path: pipeline/core\n      md5: a.dir\n  synth@train:\n    cmd: x\n")
    gone = "  corrector:\n    cmd: python -m pipeline.stages corrector demo\n    outs:\n    - path: data/demo/corrector\n"
    lock.write_text(kept[:kept.index("  synth@train")] + gone + kept[kept.index("  synth@train"):])
    assert prune_lock(lock, {"frames", "synth"}) == ["corrector"]
    assert lock.read_text() == kept                      # the rest byte for byte
    assert prune_lock(lock, {"frames", "synth"}) == [] and lock.read_text() == kept
    assert prune_lock(tmp_path / "none.lock", {"frames"}) == []
