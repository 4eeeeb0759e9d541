"""A campaign leaves nothing behind when it stops: no semaphore for Python's resource tracker to clean up.

The ranks share the campaign's resource tracker (``spawn`` hands it down), so a named semaphore that a
rank made and could not unlink, because the pool terminated it in the middle of a case, was reported at
the campaign's exit: ``resource_tracker: There appear to be N leaked semaphore objects``.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ranks

#: A target whose save runs a graph through ``torch.fx.Interpreter``, as an activation-checkpointed module
#: does (the interpreter makes a hidden tqdm progress bar, and tqdm a lock), then waits to be stopped.
TARGET = """
import os
import time
from pathlib import Path

import torch
from torch import fx

from shardfuzz.targets import DcpTarget


class InterpretThenWait(DcpTarget):
    def save(self, state_dict, *, checkpoint_id, process_group):
        fx.Interpreter(fx.symbolic_trace(torch.nn.Linear(2, 2))).run(torch.zeros(1, 2))
        Path(os.environ["SHARDFUZZ_TEST_IN_SAVE"]).touch()
        time.sleep(3600)
"""


def test_a_campaign_stopped_mid_case_leaves_no_semaphore_behind(tmp_path):
    (tmp_path / "waiting_target.py").write_text(TARGET)
    in_save = tmp_path / "in-save"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "SHARDFUZZ_TEST_IN_SAVE": str(in_save),
    }
    command = [sys.executable, "-m", "shardfuzz", "run", "--max-cases", "3", "--world-size", "2"]
    command += ["--database", "none", "--corpus", str(tmp_path / "corpus"), "--exit-zero", "--plain"]
    command += ["--target", "waiting_target:InterpretThenWait"]
    # stderr through a pipe: it reaches its end only when the resource tracker, which writes the warning
    # after the campaign's process has exited, has exited too.
    campaign = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not in_save.exists() and campaign.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_save.exists(), "the campaign's first case never reached its save"
        campaign.send_signal(signal.SIGINT)  # a graceful stop: the pool terminates the ranks inside the case
        _, stderr = campaign.communicate(timeout=120)
    finally:
        if campaign.poll() is None:
            campaign.kill()
            campaign.communicate()
    assert "stopped by SIGINT" in stderr, stderr
    assert "leaked semaphore" not in stderr, stderr
