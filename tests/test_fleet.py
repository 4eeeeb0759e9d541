"""``shardfuzz fleet``: the collector's one corpus, the options, and a local Ray fleet end to end.

The end-to-end tests run the fleet as a user would (a subprocess, a local Ray cluster it starts) on a copy
of the corpus (torch's known bugs stay known) with a deliberately broken target, every save raising, that
each campaign finds at once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from shardfuzz.case import FSDP1, SGD, Case, Linear, Model, Sequential, Side
from shardfuzz.cli import main
from shardfuzz.findings.corpus import entry_for, entry_text, load_corpus, load_entry
from shardfuzz.findings.explanation import Explanation
from shardfuzz.fleet.campaign import attempt_seed
from shardfuzz.fleet.collector import Collector
from shardfuzz.verdict import Mismatch, Verdict

HERE = Path(__file__).parent
CASE = Case(
    model=Model(2, Sequential([Linear(3)])), save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (1,)), optimizer=SGD()
)
BIG = attrs.evolve(CASE, model=Model(2, Sequential([Linear(3), Linear(4)])))
VERDICT = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ", (0, 1)),))
OTHER = Verdict("mismatch", (Mismatch("complete-state", "optim.state.0.weight.exp_avg", 0, "values differ"),))


def test_one_bug_found_by_two_campaigns_is_one_entry_with_both_hits(tmp_path):
    collector = Collector(str(tmp_path), 60.0)
    first = collector.found(0, 0, entry_text(entry_for(BIG, VERDICT)))
    second = collector.found(1, 0, entry_text(entry_for(CASE, VERDICT)))
    other = collector.found(1, 0, entry_text(entry_for(CASE, OTHER)))
    assert first == second != other
    entries = {path.name: entry for path, entry in load_corpus(tmp_path)[0]}
    assert len(entries) == 2 and entries[first].hits == 2 and entries[first].case == CASE  # the smaller case
    news, _ = collector.poll()
    assert [line.split(":")[0] for line in news] == ["NEW from campaign 0", "campaign 1", "NEW from campaign 1"]
    assert collector.poll() == ([], [])


def test_an_explanation_is_kept_where_the_entry_holds_the_case_it_explains(tmp_path):
    collector = Collector(str(tmp_path), 60.0)
    name = collector.found(0, 0, entry_text(entry_for(CASE, VERDICT)))
    collector.found(1, 0, entry_text(entry_for(BIG, VERDICT)))  # merged into campaign 0's smaller case
    explanation = Explanation((), necessary={"save_engine": "fsdp1"}, date="2026-12-06")
    collector.explained(1, 0, entry_text(attrs.evolve(entry_for(BIG, VERDICT), explanation=explanation)))
    assert load_entry(tmp_path / name).explanation is None  # BIG's explanation is not CASE's
    collector.explained(0, 0, entry_text(attrs.evolve(entry_for(CASE, VERDICT), explanation=explanation)))
    assert load_entry(tmp_path / name).explanation == explanation


def test_a_restart_is_a_new_attempt_with_its_own_seed_and_the_corpus_as_it_stands(tmp_path):
    collector = Collector(str(tmp_path), 60.0)
    before = time.time()
    (first, end), (other, _), (restart, same_end) = collector.start(0), collector.start(1), collector.start(0)
    assert (first, other, restart) == (0, 0, 1) and end == same_end >= before + 60  # a restart keeps the budget's end
    news, _ = collector.poll()
    assert news == ["campaign 0 restarted (attempt 1): its actor or node had died"]
    name = collector.found(0, 1, entry_text(entry_for(CASE, VERDICT)))
    assert list(collector.corpus_texts()) == [name]
    collector.flushed(0, 0, {"cases_run": 3})
    collector.flushed(0, 1, {"cases_run": 1})
    collector.flushed(0, 1, {"cases_run": 2})
    assert collector.poll()[1] == [{"cases_run": 3}, {"cases_run": 2}]  # every attempt's latest
    seeds = {attempt_seed(7, campaign, attempt, 3) for campaign in range(3) for attempt in range(4)}
    assert len(seeds) == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fleet", "--workers", "2"], "a fleet's campaigns are --campaigns"),
        (["fleet", "--save-python", sys.executable], "not run as a fleet yet"),
        (["fleet", "--target", "nowhere:Nothing"], "cannot import 'nowhere'"),
    ],
)
def test_what_a_fleet_cannot_run_is_refused_before_ray_starts(argv, message, capsys, tmp_path):
    assert main([*argv, "--corpus", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


# --- a local Ray fleet, end to end ------------------------------------------------------------------------------


def _fleet(tmp_path: Path, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shardfuzz",
        "fleet",
        "--campaigns",
        "2",
        "--world-size",
        "2",
        "--target",
        "faults:RaiseOnSave",
        "--corpus",
        str(tmp_path / "corpus"),
        "--database",
        str(tmp_path / "examples"),
        "--report",
        str(tmp_path / "report.json"),
        "--explain-budget",
        "0",
        "--plain",
        *map(str, args),
    ]


def _needs_ray():
    pytest.importorskip("ray", reason="the fleet needs Ray: pip install 'shardfuzz[ray]'")


@pytest.fixture
def fleet_dir(tmp_path):
    """A corpus copied from the repository's, and the broken target armed."""
    shutil.copytree(HERE.parent / "corpus", tmp_path / "corpus")
    (tmp_path / "armed").touch()
    return tmp_path


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(HERE), "SHARDFUZZ_TEST_FAULT_FLAG": str(tmp_path / "armed")}


def _new_entries(tmp_path: Path) -> list:
    """The broken target's entries in the fleet's corpus (a campaign may meet a torch bug the corpus does not know
    under these conditions too: that is its own entry)."""
    kept = {path.name for path in (HERE.parent / "corpus").glob("*.json")}
    return [
        (path, entry)
        for path, entry in load_corpus(tmp_path / "corpus")[0]
        if path.name not in kept and "injected save failure" in entry.summary
    ]


def test_a_database_the_driver_cannot_open_stops_the_fleet_before_any_campaign(tmp_path):
    _needs_ray()
    (tmp_path / "examples").write_text("a file, not a directory")
    proc = subprocess.run(_fleet(tmp_path, "--budget", "20"), env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the fleet's example database did not start" in proc.stderr and "is a file, not a directory" in proc.stderr


# 29 to 34 s on 2 cores (a Ray cluster's start and two 10 s campaigns): the largest test of the default tier, which
# CI needs under 12 minutes in a slow hour too (one fresh-clone run took 13:36 where another took 9:43).
@pytest.mark.slow
@pytest.mark.ranks
def test_two_campaigns_find_one_bug_into_one_corpus_entry_and_one_report(fleet_dir):
    _needs_ray()
    tmp_path = fleet_dir
    proc = subprocess.run(
        _fleet(tmp_path, "--budget", "20", "--seed", "5"),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a new failure
    ((path, entry),) = _new_entries(tmp_path)
    assert entry.hits == 2  # found by both campaigns, saved once
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["launcher"] == "ray" and report["campaigns"] == 2 and report["final"]
    assert sorted(row["worker"] for row in report["worker_reports"]) == [0, 1]
    assert report["cases_run"] == sum(row["cases_run"] for row in report["worker_reports"]) > 0
    (failure,) = (f for f in report["failures"] if f["signature"] == entry.signature)
    assert failure["hits"] >= 2 and failure["corpus_file"] == str(path)  # the report counts every failing case
    assert "NEW from campaign" in proc.stderr and "merged into" in proc.stderr


def _start_until_a_finding(tmp_path: Path, *args) -> subprocess.Popen:
    """A fleet started, once the broken target's finding is in its corpus (a campaign has sent it)."""
    proc = subprocess.Popen(_fleet(tmp_path, *args), env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _new_entries(tmp_path):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"no finding reached the fleet's corpus: {proc.communicate()[1][-3000:]}")
        time.sleep(0.5)
    return proc


def _campaign_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::FleetCampaign"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.ranks
@pytest.mark.slow  # a 60 s fleet and a restart: 80-100 s on 2 cores
def test_a_campaign_whose_actor_is_killed_is_restarted_and_loses_no_finding(fleet_dir):
    _needs_ray()
    tmp_path = fleet_dir
    proc = _start_until_a_finding(tmp_path, "--budget", "60", "--seed", "9")
    try:  # a finding sent: then kill a campaign
        pids = _campaign_pids()
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    assert "restarted (attempt 1)" in stderr
    ((_, entry),) = _new_entries(tmp_path)
    assert entry.hits >= 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert any(row.get("attempt") == 1 for row in report["worker_reports"]), report["worker_reports"]


@pytest.mark.ranks
@pytest.mark.slow  # a fleet stopped by SIGINT: 20-30 s on 2 cores
def test_sigint_stops_the_fleet_within_seconds_with_its_report_written(fleet_dir):
    _needs_ray()
    tmp_path = fleet_dir
    proc = _start_until_a_finding(tmp_path, "--budget", "300", "--seed", "11")
    try:
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - asked
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert took < 30, took
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] and len(report["worker_reports"]) == 2
