"""``shardfuzz run --target module:object`` fuzzes a user's own save/load code and shrinks its bug."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardfuzz.corpus import load_corpus

pytestmark = pytest.mark.ranks


def test_the_readme_example_target_is_caught_and_shrunk(tmp_path):
    corpus, report = tmp_path / "corpus", tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "run", "--budget", "20", "--seed", "3", "--world-size", "2",
         "--target", "user_target:ForgetsTheStep", "--corpus", str(corpus), "--report", str(report)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (failure,) = json.loads(report.read_text())["failures"]
    assert failure["class"] == "silent corruption"
    assert failure["signature"].startswith("mismatch:complete-state:optim.state.*.step")
    ((_, entry),) = load_corpus(corpus)[0]
    assert entry.target == "user_target:ForgetsTheStep"
    case = entry.case
    assert len(case.model.linears()) == 1 and case.flatten_optimizer_state_dict and case.world_size <= 2
