"""The command line: options checked with clear messages, a short real run, capabilities."""

import json
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
        (["run", "--budget", "soon"], "not a number of seconds"),
        (["run", "--world-size", "0"], "choose 1 to 64"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_target_is_named(capsys, tmp_path):
    assert main(["run", "--target", "nowhere:Nothing", "--corpus", str(tmp_path)]) == 2
    assert "cannot import 'nowhere'" in capsys.readouterr().err


@pytest.mark.ranks
def test_short_run_writes_a_report(tmp_path):
    report = tmp_path / "r.json"
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "run", "--budget", "8", "--seed", "1", "--world-size", "2",
         "--target", "faults:PerturbOneLoadedElement", "--corpus", str(corpus), "--report", str(report)],
        capture_output=True, text=True, timeout=300,
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
