"""Corpus entries: saved atomically and deduplicated, bad files named, every entry replayed.

Each entry in ``corpus/`` is one test. An entry marked known for this torch is a
strict xfail that must fail *with its recorded signature*: when torch fixes the
bug, the unexpected pass fails the run and says to update the entry's range.
"""

import json
from pathlib import Path

import attrs
import pytest
import torch

from shardfuzz.case import FSDP1, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.executor.deadlines import MeasuredDeadlines
from shardfuzz.findings.bugs import bugs_of
from shardfuzz.findings.corpus import CorpusError, entry_for, known_bugs, load_corpus, load_entry, save_entry
from shardfuzz.findings.known import Known
from shardfuzz.pytest_plugin import shared_pool
from shardfuzz.targets import unavailable
from shardfuzz.verdict import Mismatch, Verdict

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


class KnownBugStillPresent(Exception):
    pass


def _replay_params():
    entries, problems = load_corpus(CORPUS)
    assert not problems, problems
    # One entry of each bug replays in the default tier (its first, by file name), the bug's other forms in the slow
    # tier: 66 bugs of 199 entries (2026-12-06), and replaying every form had taken the CI past 12 minutes.
    # A flaky entry (its failure depends on what uninitialised memory holds) is the default tier's only where its
    # bug has no other.
    firsts = {min(bug.entries, key=lambda item: (item[1].flaky, item[0].name))[0] for bug in bugs_of(entries)}
    params = []
    # Hangs last: their deadline comes from the times of the entries replayed before them.
    for path, entry in sorted(entries, key=lambda item: (item[1].status == "hang", item[0].name)):
        marks = []
        if entry.known_on(torch.__version__):
            ranges = f"torch {entry.known.torch}" + "".join(
                f", {name} {spec}" for name, spec in entry.known.frameworks.items()
            )
            beyond = entry.known.beyond_checked(torch.__version__)
            if beyond:  # a release past the last one checked: either outcome is news, neither is a failure
                reason = (
                    f"known {entry.known.layer} bug on {ranges}, not yet checked on {', '.join(beyond)}: failing "
                    f"the same way here extends the range; an unexpected pass may be a fix (check it, then mark "
                    f"that end fixed-in)"
                )
            else:
                reason = (
                    f"known {entry.known.layer} bug on {ranges} (an unexpected pass: fixed in the installed "
                    f"release, update the range): {entry.known.report or entry.known.description}"
                )
            marks.append(pytest.mark.xfail(raises=KnownBugStillPresent, strict=not beyond, reason=reason))
        if entry.status == "hang" or path not in firsts:
            marks.append(pytest.mark.slow)  # a hang: a deadline and a restart of the ranks, 12-20 s each on 2 cores
        params.append(pytest.param(entry, id=path.stem, marks=marks))
    return params


@pytest.mark.ranks
@pytest.mark.parametrize("entry", _replay_params())
def test_corpus_entry_replays(shardfuzz_pool, shardfuzz_known, entry):
    if entry.torches is not None:
        pytest.skip(
            "saved under torch {} and loaded under torch {}: tox -e crossversion replays it".format(*entry.torches)
        )
    missing = unavailable(entry.target)
    if missing:
        pytest.skip(f"its target cannot be had here: {missing}")
    if entry.replay_world_size > shardfuzz_pool.world_size:
        pytest.skip(f"needs {entry.replay_world_size} ranks; the session pool has {shardfuzz_pool.world_size}")
    if entry.target != shardfuzz_pool.target or (
        entry.fills_its_world and entry.replay_world_size != shardfuzz_pool.world_size
    ):  # a framework's entry, or one that must fill its world: a pool of its own
        size = entry.replay_world_size if entry.fills_its_world else shardfuzz_pool.world_size
        shardfuzz_pool = shared_pool(size, case_timeout=shardfuzz_pool.case_timeout, target=entry.target)
    why_not_here = shardfuzz_pool.cannot_run(entry.case)
    if why_not_here:
        pytest.skip(why_not_here)
    verdict = _run_with_hang_deadline(shardfuzz_pool, entry)
    for _ in range(FLAKY_REPLAYS - 1 if entry.flaky and entry.known is not None else 0):
        if not verdict.ok and verdict.signature() == entry.signature:
            break
        verdict = _run_with_hang_deadline(shardfuzz_pool, entry)
    if not verdict.ok and verdict.signature() == entry.signature and entry.known is not None:
        raise KnownBugStillPresent(entry.title)
    other = None if verdict.ok else shardfuzz_known(verdict.signature(), entry.case)
    if other is not None and not entry.known_on(torch.__version__):
        # e.g. a bug known on torch 2.10 whose case meets another known bug on this torch first
        pytest.xfail(f"on torch {torch.__version__} this case meets known bug {other.filename} instead")
    assert verdict.ok, f"{entry.title}\nnow: {verdict.summary()}\nsignature now: {verdict.signature()}"


#: Runs of a known entry recorded flaky before its bug counts as gone: 1759ee2a passed 6 of 24 runs, so six
#: passes in a row would come by chance about once in 4,000 replays.
FLAKY_REPLAYS = 6

#: A hang entry's case takes a second or two when it does not hang: a stuck rank is plain long before the
#: generic deadline (30 s and up), which would make each hang entry the slowest test of the suite. Its
#: deadline is measured instead, as a campaign's are: 4x the slowest corpus case replayed before it in this
#: session, at least 5 s, at most HANG_REPLAY_SECONDS (until 5 entries have been timed).
HANG_REPLAY_SECONDS = 10.0
_REPLAY_TIMES = MeasuredDeadlines(floor=5.0, factor=4.0, warmup=5, cold=0)


def _run_with_hang_deadline(pool, entry):
    if entry.status != "hang" or pool.case_timeout is not None:
        verdict = pool.run(entry.case)
        if verdict.status not in ("hang", "crash"):
            _REPLAY_TIMES.record(verdict.seconds)
        return verdict
    pool.case_timeout = _REPLAY_TIMES.deadline(HANG_REPLAY_SECONDS)
    try:
        return pool.run(entry.case)
    finally:
        pool.case_timeout = None


# --- saving and loading -------------------------------------------------------

CASE = Case(
    model=Model(2, Sequential([Linear(3)])), save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (1,)), optimizer=SGD()
)
BIG = attrs.evolve(CASE, model=Model(2, Sequential([Linear(3), Linear(4)])))
VERDICT = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ", (0, 1)),))


def test_save_then_load_round_trips(tmp_path):
    path = save_entry(tmp_path, entry_for(CASE, VERDICT))
    entry = load_entry(path)
    assert entry.case == CASE
    assert entry.signature == VERDICT.signature()
    assert entry.versions["torch"] == torch.__version__
    assert entry.title.startswith("[silent corruption]")
    assert entry.cause.kind == "oracle" and entry.cause.key == "model.0.weight" and entry.cause.ranks == (0,)


def test_same_signature_keeps_the_smaller_case_and_counts_hits(tmp_path):
    save_entry(tmp_path, entry_for(BIG, VERDICT))
    save_entry(tmp_path, entry_for(CASE, VERDICT))
    path = save_entry(tmp_path, entry_for(BIG, VERDICT))
    assert len(list(tmp_path.glob("*.json"))) == 1
    entry = load_entry(path)
    assert entry.case == CASE
    assert entry.hits == 3


def test_known_range_matches_release_versions():
    known = Known("x", ">=2.11,<2.14", upper={"torch": "fixed-in"})
    assert known.applies_to("2.13.0+cpu")
    assert known.applies_to("2.11.0+cu126")
    assert not known.applies_to("2.14.1")
    assert known.past_fix("2.14.1") == ["torch 2.14.1 (fixed in: >=2.11,<2.14)"]
    assert known.beyond_checked("2.14.1") == [] and known.past_fix("2.13.0") == []
    with pytest.raises(ValueError, match="not a version specifier"):
        Known("x", "twenty")


def test_a_release_past_the_last_checked_is_presumed_to_have_the_bug():
    known = Known("x", ">=2.11", frameworks={"accelerate": "<=1.15.0"}, upper={"accelerate": "last-checked"})
    assert known.applies_to("2.13.0", {"accelerate": "1.15.0"})
    assert known.applies_to("2.13.0", {"accelerate": "1.16.0"})  # above the last checked: still known
    assert known.beyond_checked("2.13.0", {"accelerate": "1.16.0"}) == ["accelerate 1.16.0 (last checked: <=1.15.0)"]
    assert known.beyond_checked("2.13.0", {"accelerate": "1.15.0"}) == []
    assert not known.applies_to("2.10.0", {"accelerate": "1.16.0"})  # below the torch range's lower end
    fixed = attrs.evolve(known, upper={"accelerate": "fixed-in"})
    assert not fixed.applies_to("2.13.0", {"accelerate": "1.16.0"})
    assert fixed.past_fix("2.13.0", {"accelerate": "1.16.0"}) == ["accelerate 1.16.0 (fixed in: <=1.15.0)"]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(torch=">=2.11,<2.14"), r"upper bound: say in known.upper\['torch'\]"),
        (dict(torch=">=2.11", frameworks={"lightning": "<=2.6.6"}), r"known.upper\['lightning'\]"),
        (dict(torch=">=2.11", upper={"torch": "fixed-in"}), "no torch range with an upper bound"),
        (dict(torch="<2.14", upper={"torch": "fixed"}), "one of fixed-in, last-checked"),
        (dict(torch="<2.14", upper={"torch": "fixed-in", "accelerate": "fixed-in"}), "no accelerate range"),
    ],
)
def test_every_upper_end_says_what_it_means(fields, message):
    with pytest.raises(ValueError, match=message):
        Known("x", **fields)


def test_a_failed_write_leaves_the_old_entry_and_no_temp_file(tmp_path, monkeypatch):
    path = save_entry(tmp_path, entry_for(BIG, VERDICT))
    before = path.read_text()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", explode)
    with pytest.raises(OSError, match="disk full"):
        save_entry(tmp_path, entry_for(CASE, VERDICT))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"schema_version": 7}', "schema_version 7"),
        (lambda d: d.pop("case"), "case"),
        (lambda d: d["case"].update(steps=-3), "steps"),
        (lambda d: d.update(status="fine"), "status"),
        (lambda d: d.update(known={"description": "x", "torch": "soon"}), "not a version specifier"),
    ],
)
def test_bad_files_are_named_with_what_is_wrong(tmp_path, content, message):
    good = json.loads(save_entry(tmp_path, entry_for(CASE, VERDICT)).read_text())
    if callable(content):
        content(good)
        content = json.dumps(good)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CorpusError, match=message) as info:
        load_entry(bad)
    assert str(bad) in str(info.value)
    entries, problems = load_corpus(tmp_path)
    assert len(entries) == 1 and len(problems) == 1  # the good entry still loads


_WRITER = """
import sys, attrs
from shardfuzz.findings.corpus import entry_for, save_entry
from shardfuzz.case import Case, FSDP1, SGD, Linear, Model, Sequential, Side
from shardfuzz.verdict import Mismatch, Verdict
directory = sys.argv[1]
import torch, hypothesis  # entry_for records their versions; import before saying ready
print("ready", flush=True)
n = 0
while True:
    n += 1
    width = 1 + n % 7
    case = Case(model=Model(2, Sequential([Linear(width)] * (1 + n % 5))), save=Side(FSDP1(), (2,)),
                load=Side(FSDP1(), (1,)), optimizer=SGD())
    verdict = Verdict("mismatch", (Mismatch("state-equal", f"model.{n % 3}.weight", 0, "values differ"),))
    path = save_entry(directory, attrs.evolve(entry_for(case, verdict), summary="x" * 200_000))
    print(path, flush=True)
"""


@pytest.mark.parametrize("kill_after", [0.3, 0.8, 1.5])
def test_a_run_killed_while_saving_leaves_no_corrupt_or_missing_entry(tmp_path, kill_after):
    """SIGKILL a process that keeps writing and deduplicating big entries; every file it reported stays readable."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    reported = set(proc.communicate()[0].split())
    assert reported, "the writer saved nothing before it was killed"
    entries, problems = load_corpus(tmp_path)
    assert not problems
    assert {str(path) for path, _ in entries} == reported  # nothing missing, nothing half-written
    assert all(entry.hits >= 1 for _, entry in entries)


def test_a_known_bug_with_when_matches_only_cases_that_have_those_dimensions(tmp_path):
    hsdp_save = attrs.evolve(CASE, save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 1)))
    entry = attrs.evolve(
        entry_for(hsdp_save, VERDICT),
        known=Known(description="replicas diverge", torch=">=0", when={"save_mesh": "2d"}),
    )
    save_entry(tmp_path, entry)
    known = known_bugs(load_corpus(tmp_path)[0], torch.__version__)
    assert known.lookup(VERDICT.signature(), hsdp_save) is not None
    assert known.lookup(VERDICT.signature(), CASE) is None  # same signature, but a 1-D save: a new bug
    assert known.lookup(VERDICT.signature()) is not None  # no case: the signature alone


# --- identity: a finding never lands in another bug's entry -------------------------------


def test_one_signature_from_two_targets_gives_two_entries(tmp_path):
    first = save_entry(tmp_path, entry_for(CASE, VERDICT))
    second = save_entry(tmp_path, entry_for(BIG, VERDICT, target="mypackage.ckpt:Mine"))
    assert first != second
    assert load_entry(first).case == CASE and load_entry(second).case == BIG
    assert load_entry(second).target == "mypackage.ckpt:Mine" and load_entry(first).hits == 1


def test_a_finding_outside_a_known_entrys_conditions_is_new_and_the_known_file_is_untouched(tmp_path):
    hsdp_save = attrs.evolve(CASE, save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 1)))
    known = attrs.evolve(
        entry_for(hsdp_save, VERDICT),
        known=Known(description="replicas diverge", torch=">=0", when={"save_mesh": "2d"}),
    )
    known_path = save_entry(tmp_path, known)
    before = known_path.read_bytes()
    new_path = save_entry(tmp_path, entry_for(BIG, VERDICT))  # same signature, a 1-D save: another bug
    assert new_path != known_path
    assert known_path.read_bytes() == before
    assert load_entry(new_path).case == BIG and load_entry(new_path).known is None
    # A finding that does match the known bug changes nothing either (the campaign counts it as a hit).
    assert save_entry(tmp_path, entry_for(hsdp_save, VERDICT)) == known_path
    assert known_path.read_bytes() == before
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_known_bug_seen_on_a_torch_outside_its_range_is_a_new_entry(tmp_path):
    known_path = save_entry(
        tmp_path, attrs.evolve(entry_for(CASE, VERDICT), known=Known("old bug", "<2.0", upper={"torch": "fixed-in"}))
    )
    before = known_path.read_bytes()
    new_path = save_entry(tmp_path, entry_for(BIG, VERDICT))
    assert new_path != known_path and known_path.read_bytes() == before


def test_an_untriaged_entry_from_another_torch_is_kept_apart(tmp_path):
    old = attrs.evolve(entry_for(BIG, VERDICT), versions={"torch": "2.10.0"})
    old_path = save_entry(tmp_path, old)
    new_path = save_entry(tmp_path, entry_for(CASE, VERDICT))
    assert new_path != old_path and load_entry(old_path).case == BIG


def test_an_unreadable_file_under_the_new_entrys_name_is_not_overwritten(tmp_path):
    entry = entry_for(CASE, VERDICT)
    (tmp_path / entry.filename).write_text("{ hand-edited and broken")
    path = save_entry(tmp_path, entry)
    assert path.name != entry.filename
    assert (tmp_path / entry.filename).read_text() == "{ hand-edited and broken"


def test_known_bugs_tell_entries_of_one_signature_apart_by_their_conditions(tmp_path):
    hsdp = attrs.evolve(CASE, save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 1)))
    save_entry(
        tmp_path,
        attrs.evolve(entry_for(hsdp, VERDICT), title="hsdp one", known=Known("a", ">=0", when={"save_mesh": "2d"})),
    )
    save_entry(
        tmp_path,
        attrs.evolve(
            entry_for(BIG, VERDICT, target="t:T"), title="1-d one", known=Known("b", ">=0", when={"save_mesh": "1d"})
        ),
    )
    known = known_bugs(load_corpus(tmp_path)[0], torch.__version__)
    assert known.lookup(VERDICT.signature(), hsdp).title == "hsdp one"
    assert known.lookup(VERDICT.signature(), CASE).title == "1-d one"


# --- what users read about the corpus -----------------------------------------------------


def test_the_known_bug_table_in_corpus_readme_is_current():
    from shardfuzz.findings.known_table import known_bug_table

    assert (CORPUS / "README.md").read_text() == known_bug_table(load_corpus(CORPUS)[0]), (
        "corpus/README.md is out of date: run `shardfuzz known-bugs -o corpus/README.md`"
    )


def test_an_issue_text_says_what_was_expected_what_happened_and_carries_the_script():
    from shardfuzz.findings.upstream import issue_text

    entry = attrs.evolve(
        entry_for(CASE, VERDICT), known=Known("x", ">=2.10", link="https://example.org/1", seen=["2.13.0+cpu"])
    )
    text = issue_text(entry, script="print('repro')\n", env={"torch": "2.13.0+cpu", "backend": "gloo"})
    assert text.startswith("# [state-equal] model.0.weight")
    for part in (
        "## What was expected",
        "## What happened",
        "model.0.weight",
        "index [0, 1]",
        "```python",
        "print('repro')",
        "## Environment",
        "- torch: 2.13.0+cpu",
        "world size: 2",
        "## Versions seen",
        "`>=2.10`",
        "https://example.org/1",
    ):
        assert part in text, part


def test_report_bug_names_a_bad_entry(tmp_path, capsys):
    from shardfuzz.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["report-bug", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_an_entry_knows_whether_its_hits_cost_a_restart():
    from shardfuzz.verdict import STUCK_RANK_STACKS

    entries = {e.signature: e for _, e in load_corpus(CORPUS)[0]}
    assert entries["crash:full-offload:SIGSEGV"].costs_a_restart
    stuck = next(e for e in entries.values() if e.status == "error" and STUCK_RANK_STACKS in e.diagnostics)
    assert stuck.costs_a_restart
    assert not next(e for e in entries.values() if e.status == "mismatch").costs_a_restart
    assert not next(
        e for e in entries.values() if e.status == "error" and not e.diagnostics.strip().startswith("---")
    ).costs_a_restart


def test_a_verdict_knows_whether_it_leaves_ranks_to_restart():
    from shardfuzz.verdict import RankError, Verdict

    error = RankError(0, "load", "KeyError", "'x'")
    assert not Verdict("error", errors=(error,)).leaves_ranks_stuck  # every rank answered: re-form the group
    assert Verdict("error", errors=(error,), detail="no report from ranks [1]").leaves_ranks_stuck
    assert Verdict("hang", detail="ranks [1] did not finish").leaves_ranks_stuck
    assert Verdict("crash", detail="rank process died").leaves_ranks_stuck
    assert not Verdict("unsupported", detail="rule: reason").leaves_ranks_stuck
    assert not Verdict("mismatch").leaves_ranks_stuck
