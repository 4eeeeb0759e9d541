"""Replay judges each entry: still failing, now passing, changed, or flaky across repeats."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from shardfuzz.case import FSDP1, FSDP2, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.executor import RankPool
from shardfuzz.findings.corpus import entry_for, load_corpus, save_entry
from shardfuzz.findings.known import Known
from shardfuzz.findings.replay import Replay, expectation, judge, replay_entries
from shardfuzz.verdict import Mismatch, RankError, Verdict

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASE = Case(
    model=Model(2, Sequential([Linear(3)])),
    save=Side(FSDP1(), (1,)),
    load=Side(FSDP2(), (2,)),
    optimizer=SGD(),
    steps=1,
)
ERROR = Verdict("error", errors=(RankError(0, "load", "KeyError", "'x.0'"),))
OTHER_ERROR = Verdict("error", errors=(RankError(0, "save", "ValueError", "nope"),))
MISMATCH = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))
PASS = Verdict("pass")


@pytest.mark.parametrize(
    "verdicts, outcome",
    [
        ([ERROR, ERROR], "still failing"),
        ([PASS], "now passing"),
        ([OTHER_ERROR, OTHER_ERROR], "changed"),
        ([ERROR, PASS, ERROR], "flaky"),
        ([ERROR, OTHER_ERROR], "flaky"),
        ([Verdict("unsupported", errors=ERROR.errors)], "now passing"),
    ],
)
def test_outcomes(verdicts, outcome):
    assert judge(entry_for(CASE, ERROR), verdicts) == outcome


@pytest.mark.ranks
def test_a_fault_that_fires_every_other_load_is_flaky_over_repeats():
    entry = entry_for(CASE, MISMATCH, target="faults:PerturbEveryOtherLoad")
    with RankPool(2, target=entry.target) as pool:
        (replay,) = replay_entries([(Path("x.json"), entry)], lambda target, n: pool, repeat=4)
    assert replay.outcome == "flaky"
    assert [v.status for v in replay.verdicts] == ["mismatch", "pass", "mismatch", "pass"]


@pytest.mark.ranks
@pytest.mark.slow  # 15-25 s on 2 cores; the default tier replays the corpus through the pool (test_corpus.py)
def test_cli_replay_reports_each_entry_and_skips_bad_files(tmp_path):
    # Not a hang: its deadline would be most of this test's time (the corpus tests replay those).
    known = next(
        (
            path
            for path, e in load_corpus(CORPUS)[0]
            if e.known_on(torch.__version__) and e.status in ("error", "mismatch")
        ),
        None,
    )
    if known is None:
        pytest.skip(f"no corpus entry is a known bug on torch {torch.__version__}")
    shutil.copy(known, tmp_path / known.name)
    save_entry(tmp_path, attrs.evolve(entry_for(CASE, ERROR), title="was a bug, passes now"))
    (tmp_path / "broken.json").write_text('{"title": ')
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "replay", str(tmp_path), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # one entry now passes
    assert "broken.json: not valid JSON" in proc.stderr
    outcomes = {Path(e["path"]).name: e["outcome"] for e in json.loads(report.read_text())["entries"]}
    assert outcomes[known.name] == "still failing"
    assert sorted(outcomes.values()) == ["now passing", "still failing"]


# --- what a replay's outcome means for the entry's ranges ----------------------

FIXED = Known("x", ">=2.10,<2.14", upper={"torch": "fixed-in"})
CHECKED = Known("x", ">=2.10,<2.14", upper={"torch": "last-checked"})


@pytest.mark.parametrize(
    "known, torch_version, outcome, unexpected",
    [
        (None, "2.13.0", "still failing", False),
        (None, "2.13.0", "now passing", True),  # an untriaged entry that passes: fixed, or never real
        (FIXED, "2.13.0", "still failing", False),
        (FIXED, "2.13.0", "now passing", True),  # inside its range: update the range
        (FIXED, "2.14.1", "now passing", False),  # past its fix: as expected
        (FIXED, "2.14.1", "still failing", True),  # past its fix, failing again: a regression
        (CHECKED, "2.14.1", "still failing", False),  # above the last checked: extends the range
        (CHECKED, "2.14.1", "now passing", False),  # ... or a fix to check: news, not a failure
        (CHECKED, "2.14.1", "changed", True),
        (CHECKED, "2.9.0", "now passing", False),  # below its range
        (FIXED, "2.13.0", "flaky", True),
    ],
)
def test_a_replay_is_judged_against_what_the_ranges_predict(known, torch_version, outcome, unexpected):
    entry = attrs.evolve(entry_for(CASE, ERROR), known=known)
    expected, note = expectation(entry, torch_version)
    replay = Replay(Path("e.json"), entry, (), outcome, expected=expected, note=note)
    assert replay.unexpected is unexpected
    if known is not None and torch_version == "2.14.1":
        assert ("past its fix" if known is FIXED else "above the last release checked") in note


def test_a_framework_release_past_the_last_checked_is_not_a_failure():
    known = Known("x", ">=2.10", frameworks={"accelerate": "<=1.15.0"}, upper={"accelerate": "last-checked"})
    entry = attrs.evolve(entry_for(CASE, ERROR, target="accelerate"), known=known)
    assert known.beyond_checked("2.13.0", {"accelerate": "1.16.0"})
    fixed = attrs.evolve(entry, known=attrs.evolve(known, upper={"accelerate": "fixed-in"}))
    assert known.past_fix("2.13.0", {"accelerate": "1.16.0"}) == []
    assert fixed.known.past_fix("2.13.0", {"accelerate": "1.16.0"}) == ["accelerate 1.16.0 (fixed in: <=1.15.0)"]
