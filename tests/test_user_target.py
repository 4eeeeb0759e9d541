"""``shardfuzz run --target module:object`` fuzzes a user's own save/load code and shrinks its bug."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardfuzz.findings.corpus import load_corpus

# Slow tier: `shardfuzz run --target module:attribute` end to end stays in the default tier through
# test_cli's short run (a user's fault target); this one proves the README's own example.
pytestmark = [pytest.mark.ranks, pytest.mark.slow]


def test_the_readme_example_target_is_caught_and_shrunk(tmp_path):
    corpus, report = tmp_path / "corpus", tmp_path / "report.json"
    # The repository's corpus, so torch's known bugs stay known and cost no shrinking; a fixed
    # number of cases rather than a time budget, so the draws do not depend on the machine's speed.
    shutil.copytree(Path(__file__).parent.parent / "corpus", corpus)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardfuzz",
            "run",
            "--budget",
            "300",
            "--max-cases",
            "60",
            "--seed",
            "3",
            "--world-size",
            "2",
            "--database",
            "none",
            "--target",
            "user_target:ForgetsTheStep",
            "--corpus",
            str(corpus),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    step_bug = "mismatch:complete-state:optim.state.*.step"
    (failure,) = [f for f in json.loads(report.read_text())["failures"] if f["signature"].startswith(step_bug)]
    assert failure["class"] == "silent corruption"
    (entry,) = [e for _, e in load_corpus(corpus)[0] if e.signature.startswith(step_bug) and e.known is None]
    assert entry.target == "user_target:ForgetsTheStep"
    case = entry.case
    assert len(case.model.linears()) == 1 and case.flatten_optimizer_state_dict and case.world_size <= 2
