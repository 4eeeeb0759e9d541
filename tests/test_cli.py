"""The command line: options checked with clear messages, a short real run, capabilities."""

import json
import re
import subprocess
import sys

import pytest

from shardfuzz.cli import main


def test_capabilities_lists_engines(capsys):
    assert main(["capabilities"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torch ")
    assert "engine" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--budget", "0"], "must be more than 0"),
        (["run", "--budget", "soon"], "is not a duration"),
        (["run", "--budget", "8x"], "is not a duration"),
        (["run", "--budget", "1h-5m"], "is not a duration"),
        (["run", "--max-cases", "0"], "must be at least 1"),
        (["run", "--workers", "two"], "not an integer"),
        (["run", "--world-size", "0"], "choose 1 to 64"),
        (["fleet", "--campaigns", "0"], "must be at least 1"),
        (["fleet", "--cpus-per-campaign", "-1"], "must be 0 or more"),
        (["fleet", "--gpus-per-campaign", "many"], "'many' is not a number\n"),
        (["fleet", "--max-restarts", "-2"], "must be 0 or more"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("8h", 28800), ("1h30m", 5400), ("0.5m", 30)]
)
def test_budgets_take_s_m_h(text, seconds):
    from shardfuzz.cli import build_parser

    assert build_parser().parse_args(["run", "--budget", text]).budget == seconds


def test_bad_database_is_named(capsys, tmp_path):
    assert main(["run", "--database", "ftp://x/y", "--corpus", str(tmp_path)]) == 2
    assert "database 'ftp://x/y'" in capsys.readouterr().err


def test_bad_target_is_named(capsys, tmp_path):
    assert main(["run", "--target", "nowhere:Nothing", "--corpus", str(tmp_path)]) == 2
    assert "cannot import 'nowhere'" in capsys.readouterr().err


@pytest.mark.ranks
def test_short_run_writes_a_report(tmp_path):
    report = tmp_path / "r.json"
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardfuzz",
            "run",
            "--budget",
            "15",  # the pool's start counts against it: 8 s left one case on a loaded machine
            "--seed",
            "1",
            "--world-size",
            "2",
            "--target",
            "faults:PerturbOneLoadedElement",
            "--corpus",
            str(corpus),
            "--report",
            str(report),
            "--database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent)},
    )
    assert proc.returncode == 1, proc.stderr  # the injected fault is a new failure
    data = json.loads(report.read_text())
    assert data["cases_run"] > 0
    # The corpus here is empty, so torch's known bugs count as new too: look for the fault's mismatch.
    assert any(f["status"] == "mismatch" for f in data["failures"]), data["failures"]
    assert data["coverage"]["save_engine"]
    assert list(corpus.glob("*.json"))
    assert "new failure" in proc.stdout
    # Not on a terminal (a pipe here, a CI log elsewhere) and without --plain: plain progress lines, no panel.
    assert re.search(
        r"^\[0:00:\d\d / 0:00:15\] (drawing|shrinking|confirming|finished)[\w ]*: \d+ cases", proc.stderr, re.M
    ), proc.stderr[-2000:]
    assert "offered values reached" not in proc.stderr
