"""A short soak: crashes of every kind and a hang among clean cases; nothing leaks, nothing is misfiled.

``bench/soak.py --cases 1000`` is the full version (see README).
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.ranks

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.slow
def test_forty_cases_with_injected_crashes_and_a_hang():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    result = soak.soak(cases=40, world_size=2, seed=5, hang_timeout=5.0, quiet=True)
    assert not result["problems"], result
    outcomes = result["outcomes"]
    assert outcomes["crash:crash"] == 4  # cases 10, 20, 30, 40: abort, os._exit, SIGKILL, segfault
    assert outcomes["hang:hang"] == 1  # case 25
    assert result["pool_events"].get("teardown-crash", 0) >= 1  # case 5 armed an abort at exit
