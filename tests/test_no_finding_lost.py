"""No finding lost, whatever phase the budget's end or a stop cuts: first run, confirmation, shrink, polishing,
explanation, saving. Each test cuts one phase with a stand-in for the ranks; each finding is kept as it stood,
marked with what did not finish."""

import sys
import time

import pytest

from shardfuzz.case import FSDP1, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.executor import CaseAbandoned
from shardfuzz.findings.campaign_result import Finding
from shardfuzz.findings.corpus import load_corpus
from shardfuzz.search.campaign import CampaignSettings, FunctionHost, run_campaign
from shardfuzz.search.run_config import RunConfig
from shardfuzz.search.runner import _Run
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import Mismatch, Verdict

MISMATCH = Verdict("mismatch", (Mismatch("state", "model.0.weight", 1, "values differ"),), seconds=0.001)
CASE = Case(
    model=Model(2, Sequential([Linear(3)])), save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (1,)), optimizer=SGD()
)


def broken_on_two_ranks(case) -> Verdict:
    return MISMATCH if case.load.world_size >= 2 and case.steps >= 1 else Verdict("pass", seconds=0.001)


def campaign(run_case, **host):
    found: list[Finding] = []
    result = run_campaign(
        FunctionHost(run_case, on_finding=found.append, **host),
        CampaignSettings(budget=60, seed=2, max_world_size=2, stop_on_finding=True),
    )
    return result, found


def abandoned_after(n: int, run_case):
    """``run_case`` until ``n`` cases have run after the first failure, then every run abandoned (the budget's
    end, as the pool says it)."""
    after_failure = []

    def run(case):
        if after_failure and len(after_failure) >= n:
            raise CaseAbandoned("abandoned the case in flight")
        verdict = run_case(case)
        if after_failure or verdict.is_failure:
            after_failure.append(case)
        return verdict

    return run


def test_a_cut_first_run_keeps_the_failure_seen_before_it():
    result, found = campaign(abandoned_after(1, broken_on_two_ranks))
    assert len(found) == 1 and not found[0].shrunk
    assert result.stopped.startswith("abandoned")


def test_a_cut_confirmation_keeps_the_failure_as_first_seen():
    def confirm(case):
        raise CaseAbandoned("abandoned the case in flight")

    result, found = campaign(broken_on_two_ranks, confirm=confirm)
    assert [f.unfinished for f in found] == [("confirmation",)]
    assert found[0].verdict == MISMATCH and not found[0].shrunk
    assert result.findings and result.stopped.startswith("abandoned")


def test_a_cut_shrink_keeps_the_smallest_failure_so_far():
    _, found = campaign(abandoned_after(4, broken_on_two_ranks))
    assert len(found) == 1 and not found[0].shrunk and found[0].case.load.world_size >= 2


def test_a_cut_polish_keeps_the_failure_hypothesis_shrank():
    runs = []

    def run_case(case):  # Hypothesis's shrink runs freely; the greedy descent after it is abandoned
        runs.append(case)
        if any(frame.f_code.co_name == "still_fails" for frame in _frames()):
            raise CaseAbandoned("abandoned the case in flight")
        return broken_on_two_ranks(case)

    _, found = campaign(run_case)
    assert len(found) == 1 and found[0].verdict.is_failure and not found[0].shrunk


def _frames():
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


class _Ranks:
    """A stand-in executor: each case runs as ``broken_on_two_ranks`` says, until ``cut_after`` runs."""

    def __init__(self, cut_after: int):
        self.runs, self.cut_after = 0, cut_after

    def cannot_run(self, case):
        return ""

    def run(self, case):
        self.runs += 1
        if self.runs > self.cut_after:
            raise CaseAbandoned("abandoned the case in flight")
        return broken_on_two_ranks(case)


def _run(corpus) -> _Run:
    run = _Run(
        RunConfig(corpus=corpus, plain=True), target=DEFAULT_TARGET, torchrun=False, world_size=2, devices=("cpu",),
        database=None,
    )  # fmt: skip
    run.budget_end = time.monotonic() + 60
    return run


FINDING = Finding(CASE, MISMATCH)


def test_a_cut_explanation_keeps_the_entry_and_says_how_to_finish_it(tmp_path, capsys):
    run = _run(tmp_path)
    run.executor = _Ranks(cut_after=3)
    run.on_finding(FINDING)
    ((path, entry),) = load_corpus(tmp_path)[0]
    assert entry.unfinished == ("explanation",)
    assert entry.explanation is not None and not entry.explanation.complete
    assert len(entry.explanation.neighbours) >= 3  # what did run is kept
    assert f"shardfuzz explain {path}" in capsys.readouterr().err


def test_an_explanation_that_finishes_is_kept_whole(tmp_path):
    run = _run(tmp_path)
    run.executor = _Ranks(cut_after=10_000)
    run.on_finding(FINDING)
    ((_, entry),) = load_corpus(tmp_path)[0]
    assert entry.unfinished == () and entry.explanation.complete


def test_a_flaky_finding_is_saved_but_not_explained(tmp_path):
    """A finding whose re-run on a fresh pool did otherwise: its neighbours would measure chance (a campaign's
    flaky compiled-TP hang 'needed' 32 values, each neighbour having happened to pass)."""
    import attrs

    run = _run(tmp_path)
    ranks = run.executor = _Ranks(cut_after=10_000)
    run.on_finding(attrs.evolve(FINDING, flaky=True, other=Verdict("pass")))
    ((_, entry),) = load_corpus(tmp_path)[0]
    assert entry.explanation is None and entry.unfinished == () and ranks.runs == 0


@pytest.mark.skipif(sys.platform == "win32", reason="a file where the corpus folder should be")
def test_a_failed_save_says_so_with_the_whole_case(tmp_path, capsys):
    blocked = tmp_path / "corpus"
    blocked.write_text("a file, not a folder")
    run = _run(blocked)
    run.executor = _Ranks(cut_after=0)
    run.on_finding(FINDING)
    err = capsys.readouterr().err
    assert "NOT SAVED" in err and '"load"' in err  # the case, whole, to recover it from the log
