"""The pool reports every rank's failure, survives errors, crashes and hangs, and keeps going."""

import os

import pytest

from shardfuzz.case import FSDP2, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.executor import PoolStartError, RankPool

import faults

pytestmark = pytest.mark.ranks

CASE = Case(
    model=Model(3, Sequential([Linear(5), Linear(2)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=SGD(),
    steps=1,
)


@pytest.fixture
def fault_flag(tmp_path, monkeypatch):
    flag = tmp_path / "armed"
    flag.touch()
    monkeypatch.setenv(faults.FLAG, str(flag))
    return flag


def _pool(target, **kwargs):
    return RankPool(2, target=f"faults:{target}", **kwargs)


def test_a_rank_that_raises_is_reported_and_the_pool_recovers(fault_flag):
    with _pool("RaiseOnRankOne", error_grace=2.0) as pool:
        verdict = pool.run(CASE)
        assert verdict.status == "error"
        assert [(e.rank, e.phase, e.type) for e in verdict.errors] == [(1, "load", "RuntimeError")]
        assert "injected failure on rank 1" in verdict.summary()
        assert "no report from ranks [0]" in verdict.detail  # rank 0 was left in a collective
        fault_flag.unlink()
        assert pool.run(CASE).status == "pass"
        assert pool.starts == 2


def test_a_crashed_rank_is_a_crash_and_the_pool_restarts(fault_flag):
    with _pool("ExitOnSave", error_grace=2.0) as pool:
        verdict = pool.run(CASE)
        assert verdict.status == "crash"
        assert "rank 1 exit 3" in verdict.detail
        fault_flag.unlink()
        assert pool.run(CASE).status == "pass"


def test_a_hung_rank_hits_the_deadline_and_the_pool_restarts(fault_flag):
    with _pool("HangOnLoad", case_timeout=8.0) as pool:
        verdict = pool.run(CASE)
        assert verdict.status == "hang"
        assert "did not finish within 8s" in verdict.detail
        fault_flag.unlink()
        assert pool.run(CASE).status == "pass"
        procs = list(pool._procs)
    assert all(not p.is_alive() for p in procs)


def test_a_documented_unsupported_combination_is_classified_not_a_finding(fault_flag):
    from shardfuzz.campaign import run_campaign

    with _pool("RejectAsUnsupported") as pool:
        verdict = pool.run(CASE)
        assert verdict.status == "unsupported" and not verdict.is_failure
        assert verdict.detail.startswith("not-implemented:")
        assert pool.starts == 1  # every rank answered: no restart
        result = run_campaign(pool.run, budget=4, seed=1, max_world_size=2)
    assert not result.findings
    assert sum(result.unsupported.values()) == result.cases_run > 0


def test_a_case_larger_than_the_pool_is_refused():
    pool = RankPool(1)
    with pytest.raises(ValueError, match="needs 2 ranks"):
        pool.run(CASE)


def test_a_target_that_cannot_be_imported_stops_the_start_with_its_name():
    with pytest.raises(PoolStartError, match="no_such_module"):
        with RankPool(1, target="no_such_module:Thing"):
            pass
