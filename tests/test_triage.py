"""A finding's kind, its upstream status as typed data, and the grouping of entries into bugs."""

from pathlib import Path

import attrs
import pytest

from shardfuzz.case import DDP, FSDP1, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.findings.bugs import apart, bugs_of, root_cause
from shardfuzz.findings.corpus import entry_for, load_entry, save_entry
from shardfuzz.findings.known import Known
from shardfuzz.findings.triage import Upstream, UpstreamLink
from shardfuzz.verdict import Mismatch, RankError, Verdict

CASE = Case(
    model=Model(2, Sequential([Linear(3)])), save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (1,)), optimizer=SGD()
)
TRACEBACK = (
    "rank 0 in load:\nTraceback (most recent call last):\n"
    '  File "/x/shardfuzz/rank/roundtrip.py", line 5, in run_case\n'
    '  File "/v/site-packages/torch/distributed/checkpoint/state_dict.py", line 9, in set_state_dict\n'
    '  File "/v/site-packages/torch/distributed/checkpoint/state_dict.py", line 892, in _unflatten_optim_state_dict\n'
    "KeyError: 'param_groups.0.lr'\n"
)
ERROR = Verdict("error", errors=(RankError(0, "load", "KeyError", "'param_groups.0.lr'", TRACEBACK),))
HANG_STACKS = (
    "--- rank 1 (in load), last output and stacks ---\nCurrent thread 0x1 (most recent call first):\n"
    '  File "/v/site-packages/torch/distributed/distributed_c10d.py", line 3151 in broadcast\n'
    '  File "/v/site-packages/torch/distributed/c10d_logger.py", line 83 in wrapper\n'
    '  File "/v/site-packages/torch/distributed/_state_dict_utils.py", line 700 in _broadcast_state_dict\n'
    '  File "/x/shardfuzz/rank/roundtrip.py", line 126 in run_case\n'
)
MISMATCH = Verdict("mismatch", (Mismatch("complete-state", "optim.state.0.weight.exp_avg", 0, "values differ"),))


def known(**fields) -> Known:
    return Known("a bug", ">=2.10", **fields)


def test_an_upstream_status_is_typed():
    reported = Upstream(links=[UpstreamLink("reported", "https://github.com/pytorch/pytorch/issues/1")])
    assert reported.status == "reported"
    related = Upstream(
        links=[UpstreamLink("related", "https://github.com/pytorch/pytorch/issues/2", note="another code path")],
        searched="2026-12-04",
        queries=["set_state_dict missing keys"],
    )
    assert related.status == "related"
    assert related.summary().startswith("no report found (searched 2026-12-04); related: ")
    fixed = Upstream(
        links=[UpstreamLink("fixed-by", "https://github.com/pytorch/pytorch/pull/3", release="incomplete")]
    )
    assert fixed.status == "fixed-by" and "(incomplete)" in fixed.summary()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Upstream(), "says when it was searched"),
        (lambda: Upstream(searched="yesterday", queries=["x"]), "says when it was searched"),
        (lambda: Upstream(searched="2026-12-04"), "says when it was searched"),
        (lambda: UpstreamLink("reports", "https://x"), "relation"),
        (lambda: UpstreamLink("related", "github.com/pytorch/pytorch/issues/1"), "https://"),
        (lambda: known(kind="limitation"), "says why in known.kind_reason"),
        (lambda: known(kind="feature", kind_reason="x"), "kind"),
    ],
)
def test_bad_triage_data_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_triage_data_round_trips_through_an_entry_file(tmp_path):
    block = known(
        kind="limitation",
        kind_reason="a maintainer: https://github.com/pytorch/torchtitan/issues/674",
        bug="fsdp2-bf16-batchnorm",
        upstream=Upstream(links=[UpstreamLink("reported", "https://github.com/pytorch/torchtitan/issues/674")]),
    )
    path = save_entry(tmp_path, attrs.evolve(entry_for(CASE, ERROR), known=block))
    assert load_entry(path).known == block


def test_root_causes_name_the_frame_the_oracle_or_where_ranks_wait():
    assert root_cause(entry_for(CASE, ERROR)) == (
        "KeyError at torch/distributed/checkpoint/state_dict.py:_unflatten_optim_state_dict"
    )
    assert root_cause(entry_for(CASE, MISMATCH)) == "complete-state on optimizer exp_avg state"
    hang = attrs.evolve(entry_for(CASE, Verdict("hang", detail="ranks [1] did not finish")), diagnostics=HANG_STACKS)
    assert root_cause(hang) == "hang in torch/distributed/_state_dict_utils.py:_broadcast_state_dict"


def test_entries_group_into_bugs_by_name_and_a_bug_has_one_kind():
    one = attrs.evolve(entry_for(CASE, ERROR), known=known(bug="dsd-unflatten"))
    two = attrs.evolve(entry_for(CASE, MISMATCH), known=known(bug="dsd-unflatten"))
    alone = attrs.evolve(entry_for(CASE, MISMATCH), known=known())
    untriaged = entry_for(CASE, ERROR)
    entries = [(Path("a.json"), one), (Path("b.json"), two), (Path("c.json"), alone), (Path("d.json"), untriaged)]
    bugs = bugs_of(entries)
    assert [(bug.name, len(bug.entries)) for bug in bugs] == [("dsd-unflatten", 2), ("c", 1)]
    assert bugs[0].root_causes == (
        "KeyError at torch/distributed/checkpoint/state_dict.py:_unflatten_optim_state_dict",
        "complete-state on optimizer exp_avg state",
    )
    other_kind = attrs.evolve(two, known=known(bug="dsd-unflatten", kind="not-promised", kind_reason="r"))
    with pytest.raises(ValueError, match="disagree on its kind"):
        bugs_of([(Path("a.json"), one), (Path("b.json"), other_kind)])


def test_two_bugs_one_failure_could_match_are_caught():
    first = attrs.evolve(entry_for(CASE, ERROR), known=known(bug="one", when={"save_engine": "fsdp1"}))
    second = attrs.evolve(entry_for(CASE, ERROR), known=known(bug="two"))
    assert len(apart([(Path("a.json"), first), (Path("b.json"), second)])) == 1
    narrowed = attrs.evolve(second, known=known(bug="two", when={"save_engine": "ddp"}))
    assert apart([(Path("a.json"), first), (Path("b.json"), narrowed)]) == []
    same_bug = attrs.evolve(second, known=known(bug="one"))
    assert apart([(Path("a.json"), first), (Path("b.json"), same_bug)]) == []


def test_a_bug_report_says_when_it_happens_and_keeps_related_threads_apart_from_the_report():
    from shardfuzz.findings.explanation import Explanation
    from shardfuzz.findings.upstream import issue_text

    related_only = Upstream(
        links=[UpstreamLink("related", "https://github.com/pytorch/pytorch/issues/2", note="another code path")],
        searched="2026-12-04",
        queries=["q"],
    )
    explanation = Explanation(
        neighbours=(), necessary={"load_engine": "fsdp1"}, free=("steps",), realistic="passes", edges=("narrow",)
    )
    entry = attrs.evolve(entry_for(CASE, ERROR), known=known(upstream=related_only), explanation=explanation)
    text = issue_text(entry, script="print()", env={})
    assert "- It needs: `load_engine=fsdp1`." in text
    assert "- Reach: it passes at realistic widths (the shrunk case stands on: a width below the world size)." in text
    assert "## Related (not this bug's report)\n\n- https://github.com/pytorch/pytorch/issues/2: another" in text
    assert "## Reported as" not in text
    reported = attrs.evolve(
        related_only, links=(UpstreamLink("reported", "https://github.com/pytorch/pytorch/issues/1"),)
    )
    text = issue_text(attrs.evolve(entry, known=known(upstream=reported)), script="print()", env={})
    assert "## Reported as\n\nhttps://github.com/pytorch/pytorch/issues/1" in text


CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def test_every_known_entry_is_triaged():
    """Each known entry names its bug and its upstream status as typed data (no untyped link left), and a
    finding that is not a bug says why."""
    from shardfuzz.findings.corpus import load_corpus

    untriaged = [
        path.stem
        for path, entry in load_corpus(CORPUS)[0]
        if entry.known is not None and (not entry.known.bug or entry.known.upstream is None or entry.known.link)
    ]
    assert untriaged == []


def test_a_run_summary_counts_known_bugs_apart_from_their_entries():
    from shardfuzz.findings.render import headline

    report = {"cases_run": 10, "wall_seconds": 5.0, "passed": 7, "failures": [], "torch": "2.13.0"}
    hits = [
        {"signature": "a", "bug": "dsd-fill-in", "hits": 2, "title": "a"},
        {"signature": "b", "bug": "dsd-fill-in", "hits": 1, "title": "b"},
        {"signature": "c", "bug": "", "hits": 1, "title": "c"},
    ]
    assert headline({**report, "known_failures": hits}).endswith("4 hit(s) of 2 known bug(s) in 3 entries")
    assert headline({**report, "known_failures": hits[:1]}).endswith("2 hit(s) of 1 known bug(s)")


def test_a_failure_that_two_bugs_could_claim_is_reported_as_new():
    from shardfuzz.findings.corpus import known_bugs

    first = attrs.evolve(entry_for(CASE, ERROR), known=known(bug="one", when={"save_engine": "fsdp1"}))
    second = attrs.evolve(entry_for(CASE, ERROR), known=known(bug="two", when={"optimizer": "sgd"}))
    both = known_bugs([(Path("a.json"), first), (Path("b.json"), second)], "2.13.0")
    assert both.lookup(ERROR.signature(), CASE) is None  # the case meets both bugs' conditions
    ddp = attrs.evolve(CASE, save=Side(DDP(), (2,)))
    assert both.lookup(ERROR.signature(), ddp) is second  # only the second's
    assert known_bugs([(Path("a.json"), first)], "2.13.0").lookup(ERROR.signature(), CASE) is first


def test_each_entry_s_own_failure_is_counted_under_its_own_bug():
    """Bugs stay apart where it matters: no entry's own case meets the conditions of another bug with its signature
    (``apart`` lists the pairs whose conditions overlap elsewhere; a failure in such an overlap is reported new)."""
    import torch

    from shardfuzz.findings.corpus import known_bugs, load_corpus

    entries = load_corpus(CORPUS)[0]
    known = known_bugs(entries, str(torch.__version__))
    misfiled = []
    for path, entry in entries:
        if entry.known is None or not entry.known_on(str(torch.__version__)):
            continue
        found = known.lookup(entry.signature, entry.case)
        if found is None or found.known.bug != entry.known.bug:
            misfiled.append(f"{path.stem} ({entry.known.bug}) -> {found.known.bug if found else 'ambiguous'}")
    assert misfiled == []
