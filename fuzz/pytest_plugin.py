"""pytest fixtures for round-trip tests: a warm rank pool and the corpus's known bugs.

Load it with ``pytest_plugins = ["shardfuzz.pytest_plugin"]`` in a conftest.py.
Heavy imports (torch, the pool) happen inside the fixtures, not at plugin load.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("shardfuzz", "shardfuzz round-trip fuzzing")
    group.addoption("--shardfuzz-world-size", type=int, default=4, help="ranks in the session's pool (default 4)")
    group.addoption(
        "--shardfuzz-corpus",
        default=None,
        help="corpus directory whose known bugs are tolerated (default: <rootdir>/corpus)",
    )
    group.addoption(
        "--shardfuzz-case-timeout",
        type=float,
        default=None,
        help="seconds before a case counts as hung (default: from the case's size, 30 s and up)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "ranks: the test starts gloo rank processes (slower)")
    config.addinivalue_line("markers", "gpu: the test needs a CUDA GPU (skipped, with torch's reason, without one)")


@pytest.fixture(scope="session")
def shardfuzz_corpus_dir(pytestconfig) -> Path:
    given = pytestconfig.getoption("--shardfuzz-corpus")
    return Path(given) if given else Path(pytestconfig.rootpath) / "corpus"


@pytest.fixture(scope="session")
def shardfuzz_known(shardfuzz_corpus_dir):
    """``known(signature) -> Entry | None`` for the corpus's known bugs on this torch."""
    import torch

    from shardfuzz.findings.corpus import known_bugs, load_corpus

    entries, _ = load_corpus(shardfuzz_corpus_dir)
    return known_bugs(entries, torch.__version__).lookup


@pytest.fixture(scope="session")
def shardfuzz_pool(pytestconfig):
    """A warm pool running the default target (DCP), one per process, closed when the process exits.

    Not a ``yield`` fixture: HypoFuzz collects tests through pytest and runs them
    after pytest's session has torn its fixtures down, and a pool closed at
    teardown would be gone by then.
    """
    return shared_pool(
        pytestconfig.getoption("--shardfuzz-world-size"),
        case_timeout=pytestconfig.getoption("--shardfuzz-case-timeout"),
    )


_POOLS: dict = {}


def shared_pool(world_size: int, *, case_timeout: float | None = None, target: str | None = None):
    """This process's pool of ``world_size`` ranks (against ``target``, default DCP), started on first
    use and closed at exit."""
    key = (world_size, case_timeout, target)
    if key not in _POOLS:
        import atexit

        from shardfuzz.executor import pool_for

        pool = pool_for(world_size, case_timeout=case_timeout, target=target)
        pool.start()
        atexit.register(pool.close)
        _POOLS[key] = pool
    return _POOLS[key]
