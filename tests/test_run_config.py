"""``shardfuzz run``'s options as one typed config: built once, and a worker's command line derived from it."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from shardfuzz.cli import build_parser
from shardfuzz.search.run_config import RunConfig


def _config(*options: str) -> RunConfig:
    return RunConfig.from_args(build_parser().parse_args(["run", *options]))


def test_the_defaults_are_the_command_lines():
    assert _config() == RunConfig()


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--budget", "15m", "--max-cases", "20", "--seed", "7", "--world-size", "3"),
        ("--target", "faults:RaiseOnRankOne", "--case-timeout", "12.5", "--generic-deadlines"),
        ("--no-confirm", "--no-steer", "--exit-zero", "--database", "none", "--replay-from", "/tmp/db"),
        ("--corpus", "/tmp/corpus", "--device", "cpu", "--report", "/tmp/r.json", "--plain"),
    ],
)
def test_a_workers_command_line_gives_back_its_config(options):
    config = attrs.evolve(_config(*options), workers=3, report_dir=Path("/tmp/out"))
    worker = config.for_worker(2, seed=11, report=Path("/tmp/w2.json"))
    assert _config(*worker.argv()) == worker
    assert worker.workers == 1 and worker.report_dir is None and worker.worker_index == 2 and worker.seed == 11
    for name in ("budget", "max_cases", "target", "case_timeout", "no_confirm", "no_steer", "database", "corpus"):
        assert getattr(worker, name) == getattr(config, name), name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget": 0}, "budget"),
        ({"world_size": 0}, "world_size"),
        ({"device": "tpu"}, "device"),
        ({"max_cases": 0}, "max_cases"),
        ({"flush_every": -1}, "flush_every"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RunConfig(**changes)
