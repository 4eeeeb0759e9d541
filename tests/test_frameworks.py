"""The shipped framework adapters (accelerate, Lightning Fabric, torchtitan) run their framework's
real checkpoint code on the pool's CPU ranks, and a fault injected into that path is caught.

Each test skips where its framework is not installed (``pip install 'shardfuzz[accelerate]'``; CI
installs the light ones, ``tox -e frameworks-newest`` all three). The default tier runs one fixed
round-trip per framework and one fixed fault (accelerate); the slow tier the other faults, a campaign per
framework that must find an injected fault and shrink it, and a short campaign of the real adapter that
must round-trip most of its cases.
"""

import attrs
import pytest

from shardfuzz.case import FSDP1, FSDP2, Adam, Case, LayerNorm, Linear, Model, Sequential, Side
from shardfuzz.executor import RankPool
from shardfuzz.pytest_plugin import shared_pool
from shardfuzz.search.campaign import CampaignSettings, FunctionHost, run_campaign
from shardfuzz.search.shrink import case_size
from shardfuzz.targets import support_for, unavailable

pytestmark = pytest.mark.ranks

FRAMEWORKS = ["accelerate", "lightning", "torchtitan"]


def _needs(target: str) -> None:
    why = unavailable(target)
    if why:
        pytest.skip(f"{target} cannot be had here: {why}")


def _case(engine_save, engine_load, state_dict: str) -> Case:
    model = Model(3, Sequential([Linear(5), LayerNorm(), Linear(2)]))
    return Case(
        model=model,
        save=Side(engine_save, (2,), state_dict=state_dict),
        load=Side(engine_load, (2,), state_dict=state_dict),
        optimizer=Adam(),
        steps=2,
        flatten_optimizer_state_dict=False,
    )


#: One case per framework that it supports, resharding where it can (FSDP1 -> FSDP2 for the two that
#: take both engines).
CASES = {
    "accelerate": _case(FSDP2(), FSDP2(reshard_after_forward=False), "sharded"),
    "lightning": _case(FSDP1(use_orig_params=True), FSDP2(), "sharded"),
    "torchtitan": _case(FSDP2(), FSDP2(), "sharded"),
}


def _unless_known(verdict, case, known) -> None:
    """An older framework release may fail the case with a known bug of its own (a corpus entry whose
    framework range holds the installed version): that is the corpus's to track, not this test's."""
    entry = None if verdict.ok else known(verdict.signature(), case)
    if entry is not None:
        pytest.xfail(f"the installed framework has known bug {entry.title}")


#: The fault's case: one on another path than CASES where the framework has one (accelerate: FULL).
FAULT_CASES = {**CASES, "accelerate": _case(FSDP2(), FSDP2(), "full")}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_adapter_round_trips_a_case_it_supports(framework, shardfuzz_known):
    _needs(framework)
    case = CASES[framework]
    assert support_for(framework).refuses(case, world_size=2) == ""
    verdict = shared_pool(2, target=framework).run(case)  # the corpus replays of its entries reuse this pool
    _unless_known(verdict, case, shardfuzz_known)
    assert verdict.ok, verdict.summary()


@pytest.mark.parametrize("state_dict", ["sharded", "full"])
def test_accelerate_is_handed_a_compiled_fsdp1_model_as_its_accelerator_holds_it(state_dict, shardfuzz_known):
    """accelerate keeps an FSDP1 model it compiles as the FSDP module under torch.compile's wrapper; handed the
    wrapper, its FSDP1 path saved '_orig_mod.'-prefixed keys ('Missing key in checkpoint state_dict:
    model._orig_mod.0.weight') and took the model for an unwrapped one ('Set the sync_module_states flag')."""
    _needs("accelerate")
    case = attrs.evolve(CASES["accelerate"], load=Side(FSDP1(), (2,), state_dict=state_dict, compiled=True))
    case = attrs.evolve(case, save=attrs.evolve(case.save, state_dict=state_dict))
    verdict = shared_pool(2, target="accelerate").run(case)
    _unless_known(verdict, case, shardfuzz_known)
    assert verdict.ok, verdict.summary()


#: The default tier checks one fault per adapter CI installs cheaply (accelerate); the rest run in the slow tier,
#: where each adapter's campaign also finds and shrinks a fault.
FAULT_FRAMEWORKS = ["accelerate", *(pytest.param(name, marks=pytest.mark.slow) for name in FRAMEWORKS[1:])]


@pytest.mark.parametrize("framework", FAULT_FRAMEWORKS)
def test_a_fault_in_the_framework_path_is_caught(framework, shardfuzz_known):
    _needs(framework)
    with RankPool(2, target=f"{framework}+StepCountersReset") as pool:
        verdict = pool.run(FAULT_CASES[framework])
    _unless_known(verdict, FAULT_CASES[framework], shardfuzz_known)
    assert verdict.status == "mismatch", verdict.summary()
    assert {m.oracle for m in verdict.mismatches} == {"complete-state"}
    assert all(m.key.endswith(".step") or ".step" in m.key for m in verdict.mismatches), verdict.summary()


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_campaign_finds_and_shrinks_a_fault_in_the_framework_path(framework, shardfuzz_known):
    _needs(framework)
    target = f"{framework}+FirstMomentsNotLoaded"
    with RankPool(2, target=target) as pool:
        result = run_campaign(
            FunctionHost(pool.run, is_known=lambda s, c: shardfuzz_known(s, c) is not None),
            CampaignSettings(
                budget=120,
                seed=3,
                max_world_size=2,
                support=support_for(target),
                vary_storage=False,
                stop_on_finding=True,
                shrink_budget=60,
            ),
        )
    assert result.findings, f"{result.cases_run} cases, nothing found"
    finding = min(result.findings.values(), key=lambda f: case_size(f.case))
    assert finding.verdict.mismatches and finding.verdict.mismatches[0].oracle == "complete-state"
    assert case_size(finding.case) <= 8, finding.case


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_short_campaign_of_the_adapter_runs_its_framework(framework, shardfuzz_known):
    _needs(framework)
    with RankPool(2, target=framework) as pool:
        result = run_campaign(
            FunctionHost(pool.run, is_known=lambda s, c: shardfuzz_known(s, c) is not None),
            CampaignSettings(
                budget=90, seed=5, max_world_size=2, max_cases=20, support=support_for(framework), vary_storage=False
            ),
        )
    # Most cases round-trip through the framework; what does not is a finding for the corpus (the
    # fuzzer's product), not this test's failure: campaigns of each adapter found several.
    assert result.cases_run >= 10
    assert result.passed >= result.cases_run // 2, [f.verdict.summary() for f in result.findings.values()]


def _framework_entries():
    from pathlib import Path

    from shardfuzz.findings.corpus import load_corpus
    from shardfuzz.targets import SHIPPED_TARGETS

    entries, _ = load_corpus(Path(__file__).resolve().parent.parent / "corpus")
    return [pytest.param(entry, id=path.stem) for path, entry in entries if entry.target in SHIPPED_TARGETS]


@pytest.mark.parametrize("entry", _framework_entries())
def test_a_framework_entry_exports_a_script_that_needs_no_shardfuzz(entry):
    _needs(entry.target)
    from shardfuzz.findings.export import export_script

    script = export_script(entry)
    compile(script, "repro.py", "exec")
    assert not [line for line in script.splitlines() if line.startswith(("from shardfuzz", "import shardfuzz"))]
    assert f"_target = {SHIPPED_CLASS[entry.target]}()" in script
    # That each script reproduces its bug: test_export's test_every_known_bug_reproduces_from_its_exported_script.


SHIPPED_CLASS = {
    "accelerate": "AccelerateFsdpCheckpoint",
    "lightning": "FabricCheckpoint",
    "torchtitan": "TitanCheckpointManager",
}
