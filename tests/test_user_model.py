"""``--model package.module:factory``: the user's own model, fuzzed around (engines, wrap sets, meshes,
state-dict types, options, optimizers, steps), shrunk around, exported with its factory imported.

The factories are in ``tests/user_models.py``: a small transformer LM (token embedding, an encoder layer
with ``nn.MultiheadAttention``, a norm, an LM head) with an ``example_batch`` method, and an MLP returned
with its batch function.
"""

import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from shardfuzz import strategies as sf
from shardfuzz.case import DDP, FSDP2, SGD, TP, Adam, Case, Side, UserModel, dumps, loads, to_dict
from shardfuzz.findings.describe import describe
from shardfuzz.rank.model_factory import UserModelError, probe
from shardfuzz.search.shrink import simpler_cases

ROOT = Path(__file__).resolve().parent.parent
LM = UserModel("tests.user_models:small_transformer")
MLP = UserModel("tests.user_models:mlp_with_batch_function")


def _case(model=LM, **changes):
    fields = dict(
        model=model, save=Side(FSDP2(), (2,), wrap=("block",)), load=Side(DDP(), (1,)), optimizer=Adam(), steps=2
    )
    return Case(**{**fields, **changes})


def test_a_user_model_case_round_trips_through_json_and_names_only_its_factory():
    case = _case()
    assert to_dict(case)["model"] == {"factory": "tests.user_models:small_transformer"}
    assert loads(dumps(case)) == case
    assert "model tests.user_models:small_transformer" in describe(case)


def test_the_factory_is_probed_on_the_meta_device_for_what_the_fuzzer_asks_of_a_model():
    shape = probe(LM.factory)
    assert shape.parameter_shapes["embed.weight"] == (11, 6)
    assert "block.self_attn" in shape.submodule_paths and "head" in shape.leaf_paths
    assert ("head", 6, 11, False) in shape.linears
    assert {"MultiheadAttention", "Embedding", "Linear"} <= set(shape.leaf_kinds)
    assert probe(MLP.factory).parameter_shapes == {
        "0.weight": (5, 3),
        "0.bias": (5,),
        "2.weight": (2, 5),
        "2.bias": (2,),
    }


@pytest.mark.parametrize(
    "spec, says",
    [
        ("no_such_package.models:f", "cannot import 'no_such_package.models'"),
        ("tests.user_models:missing", "has no attribute 'missing'"),
        ("tests.user_models:not_a_module", "returned int, not an nn.Module"),
        ("tests.user_models:no_batch", "no way to make an input batch"),
        ("tests.user_models", "package.module:function"),
    ],
)
def test_a_factory_that_cannot_be_used_is_refused_naming_it_and_why(spec, says):
    with pytest.raises((UserModelError, ValueError)) as caught:
        Case(model=UserModel(spec), save=Side(DDP(), (1,)), load=Side(DDP(), (1,)), optimizer=SGD())
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"load_mutation": "wider"},
        {"save": Side(TP(plan=(("head", "colwise"),)), (1, 2))},
        {"load": Side(DDP(), (1,), compiled=True)},
        {"load": Side(DDP(), (1,), meta_init=True)},
    ],
)
def test_what_a_user_model_is_not_drawn_with_is_refused(changes):
    with pytest.raises(ValueError, match="user's model"):
        _case(**changes)


def test_the_strategies_draw_only_the_users_model_around_which_they_vary_the_rest():
    engines, wrapped = set(), False

    @settings(max_examples=120, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=4, model=LM))
    def draw(case):
        nonlocal wrapped
        assert case.model == LM and case.load_mutation is None
        for side in (case.save, case.load):
            assert not (side.checkpointed or side.compiled or side.meta_init) and not isinstance(side.engine, TP)
            engines.add(type(side.engine).__name__)
            wrapped |= bool(side.wrap)

    draw()
    assert engines == {"FSDP1", "FSDP2", "DDP", "Unsharded"} and wrapped


def test_the_shrinker_shrinks_around_a_users_model_never_into_it():
    case = _case(steps=3, checks=("continuation",))
    simpler = list(simpler_cases(case))
    assert simpler and all(c.model == LM for c in simpler)


@pytest.mark.ranks
def test_the_users_transformer_round_trips_across_engines_and_a_fault_in_it_is_caught():
    from shardfuzz.executor import RankPool

    case = _case(checks=("continuation",))
    with RankPool(2) as pool:
        assert pool.run(case).ok
        assert pool.run(attrs.evolve(case, model=MLP, save=Side(FSDP2(), (2,)))).ok
    with RankPool(2, target="shardfuzz.targets.mutants:PerturbOneLoadedElement") as pool:
        verdict = pool.run(case)
    assert verdict.status == "mismatch", verdict.summary()


@pytest.mark.ranks
def test_an_entry_on_a_users_model_exports_a_script_that_imports_its_factory(tmp_path):
    from shardfuzz.findings.corpus import entry_for, save_entry
    from shardfuzz.findings.export import export_script
    from shardfuzz.verdict import Mismatch, Verdict

    failing = Verdict("mismatch", (Mismatch("complete-state", "model.head.weight", 0, "values differ"),))
    entry_path = save_entry(tmp_path, entry_for(_case(), failing, world_size=2))
    from shardfuzz.findings.corpus import load_entry

    script = tmp_path / "repro.py"
    script.write_text(export_script(load_entry(entry_path), filename=entry_path.name))
    assert "import_module('tests.user_models').small_transformer" in script.read_text()
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "did not reproduce" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_run_model_with_a_bad_factory_exits_2_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "run", "--model", "nowhere.models:lm", "--budget", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--model nowhere.models:lm: cannot import 'nowhere.models'" in proc.stderr
    assert not (tmp_path / "corpus").exists()


@pytest.mark.ranks
@pytest.mark.slow  # 7 to 70 s (a finding's shrink); the default tier runs the user's model on ranks above
def test_run_model_fuzzes_the_users_model_from_its_own_folder(tmp_path):
    import shutil

    (tmp_path / "mymodels.py").write_text((ROOT / "tests" / "user_models.py").read_text())
    shutil.copytree(ROOT / "corpus", tmp_path / "corpus")  # its known bugs are let pass, not shrunk
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "run", "--model", "mymodels:small_transformer", "--max-cases", "6"]
        + ["--budget", "120", "--seed", "0", "--world-size", "2", "--database", "none", "--plain", "--exit-zero"]
        + ["--report", str(report), "--no-confirm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["cases_run"] >= 6 and data["model"] == "mymodels:small_transformer", data["cases_run"]
