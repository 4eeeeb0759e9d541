"""``shardfuzz shrink``: a corpus entry's case shrunk further, only ever to a smaller case that fails the same way."""

import json
import subprocess
import sys

import pytest

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    Adam,
    BatchNorm,
    Block,
    Case,
    LayerNorm,
    Linear,
    Model,
    Sequential,
    Side,
)
from shardfuzz.executor import RankPool
from shardfuzz.findings.corpus import entry_for, load_entry, save_entry
from shardfuzz.search.shrink import case_size, shrink_case, simpler_cases

BIG = Case(
    model=Model(
        6,
        Block([Linear(9), BatchNorm(), Sequential([Linear(7, frozen=True), LayerNorm(), Linear(5)])]),
        dtype="float64",
    ),
    save=Side(FSDP2(reshard_after_forward=False), (3,), wrap=("a",)),
    load=Side(FSDP1(), (2,)),
    optimizer=Adam(),
    steps=3,
    seed=4242,
    checks=("continuation",),
    param_groups=2,
)


def test_every_simpler_case_is_a_valid_case_and_smaller_or_equal():
    candidates = list(simpler_cases(BIG))
    assert len(candidates) > 20
    assert all(isinstance(c, Case) for c in candidates)
    assert all(case_size(c) <= case_size(BIG) for c in candidates)


def test_a_greedy_shrink_reaches_the_minimal_failing_case_and_finishes():
    def fails(case):  # the "bug": a BatchNorm after at least one training step
        return case.model.has_batch_norm and case.steps >= 1

    result = shrink_case(BIG, fails, budget=60)
    assert result.finished and result.moves >= 5
    case = result.case
    assert fails(case)
    assert [type(leaf).__name__ for leaf in _leaves(case)] in (["Linear", "BatchNorm"], ["BatchNorm", "Linear"])
    assert case.steps == 1 and case.model.input_width == 1 and case.seed == 0 and case.checks == ()
    assert case.save.world_size == case.load.world_size == 1
    assert all(out == 1 for _, _, out, _ in case.model.linears())


def test_a_shrink_out_of_budget_says_it_did_not_finish():
    result = shrink_case(BIG, lambda case: True, budget=0)
    assert not result.finished and result.case == BIG


def test_a_candidate_that_fails_differently_or_is_not_admissible_is_not_taken():
    tried = []

    def fails(case):
        tried.append(case)
        return False

    result = shrink_case(BIG, fails, budget=60, admissible=lambda case: case.save.engine == BIG.save.engine)
    assert result.case == BIG and result.finished
    assert all(case.save.engine == BIG.save.engine for case in tried)


def _leaves(case):
    from shardfuzz.case import leaves

    return leaves(case.model.root)


@pytest.mark.ranks
@pytest.mark.slow  # 15-18 s on 2 cores; the descent itself is tested above, the command's errors below
def test_the_shrink_command_rewrites_the_entry_with_a_smaller_case_of_the_same_signature(tmp_path):
    # BuffersNotLoaded (a mutant) fails on any model with a BatchNorm; start from a big case of it.
    case = Case(
        model=Model(3, Sequential([Linear(4), BatchNorm(), Linear(3), LayerNorm()])),
        save=Side(DDP(), (2,)),
        load=Side(DDP(), (1,)),
        optimizer=Adam(),
        steps=2,
        seed=77,
    )
    target = "shardfuzz.targets.mutants:BuffersNotLoaded"
    with RankPool(2, target=target) as pool:
        recorded = pool.run(case)
    assert recorded.status == "mismatch", recorded.summary()
    path = save_entry(tmp_path, entry_for(case, recorded, target=target, shrunk=False))
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "shrink", str(path), "--budget", "90"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    entry = load_entry(path)
    assert case_size(entry.case) < case_size(case) and entry.signature == recorded.signature()
    assert entry.case.model.has_batch_norm and len(entry.case.model.linears()) == 1
    assert entry.shrunk, proc.stdout  # a local minimum: nothing one step simpler fails the same way
    assert "finished" in proc.stdout
    assert json.loads(path.read_text())["target"] == "shardfuzz.targets.mutants:BuffersNotLoaded"


def test_the_shrink_command_names_a_bad_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = subprocess.run([sys.executable, "-m", "shardfuzz", "shrink", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "not valid JSON" in proc.stderr
