"""Long runs and scale-out on real ranks: SIGINT then resume, a shared Redis, torchrun, several workers.

Each test runs ``shardfuzz run`` as a user would, in a subprocess, with the
test faults on the path and a copy of the corpus (so torch's known bugs stay
known and nothing is written into the repository's corpus).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ranks

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(HERE)}


@pytest.fixture
def corpus(tmp_path):
    copy = tmp_path / "corpus"
    shutil.copytree(HERE.parent / "corpus", copy)
    return copy


def _shardfuzz(*args, **kw):
    return [sys.executable, "-m", "shardfuzz", "run", "--world-size", "2", "--plain", *map(str, args)]


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def _poll(path: Path, ready, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            report = _report(path)
        except (OSError, ValueError):
            report = None
        if report is not None and ready(report):
            return report
        time.sleep(0.2)
    pytest.fail(f"{path} never showed what the test waited for")


@pytest.mark.slow
def test_sigint_stops_within_seconds_with_reports_and_the_rerun_resumes(tmp_path, corpus):
    database, report = tmp_path / "examples", tmp_path / "r1.json"
    args = [
        "--target",
        "faults:PerturbOnTwoRanks",
        "--budget",
        "10m",
        "--seed",
        "1",
        "--corpus",
        corpus,
        "--database",
        database,
        "--report",
        report,
        "--report-dir",
        tmp_path / "out",
        "--flush-every",
        "0.5",
    ]
    proc = subprocess.Popen(_shardfuzz(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _poll(report, lambda r: r["cases_run"] >= 12 and any(database.rglob("*")))
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 10, "a stop must take seconds, not the rest of the budget"
    assert proc.returncode == 130, err
    final = _report(report)
    assert final["final"] and final["stopped"] == "SIGINT"
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.json", "summary.md", "junit.xml"}
    assert "stopped by SIGINT" in err
    mismatch = [f for f in final["failures"] if f["status"] == "mismatch"]
    assert mismatch and all(Path(f["corpus_file"]).exists() for f in mismatch)

    again = tmp_path / "r2.json"
    rerun = subprocess.run(
        _shardfuzz(
            "--target",
            "faults:PerturbOnTwoRanks",
            "--max-cases",
            "1",
            "--seed",
            "2",
            "--corpus",
            corpus,
            "--database",
            database,
            "--report",
            again,
            "--no-confirm",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    resumed = _report(again)
    assert resumed["replayed_from_database"] >= 1, rerun.stderr
    assert any(f["from_database"] and f["signature"] == mismatch[0]["signature"] for f in resumed["failures"]), (
        mismatch,
        resumed["failures"],
        resumed["known_failures"],
        resumed["cases_run"],
    )


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
    pytest.importorskip("redis", reason="the redis client (the 'redis' extra)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not answer within 10 s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_two_runs_share_a_redis_database(tmp_path, corpus, redis_url):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    a = subprocess.run(
        _shardfuzz(
            "--target",
            "faults:PerturbOnTwoRanks",
            "--budget",
            "90",
            "--max-cases",
            "25",
            "--seed",
            "1",
            "--corpus",
            corpus,
            "--database",
            redis_url,
            "--report",
            first,
            "--no-confirm",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = [f for f in _report(first)["failures"] if f["status"] == "mismatch"]
    assert a.returncode == 1 and found, a.stderr
    other_corpus = tmp_path / "other-corpus"
    shutil.copytree(HERE.parent / "corpus", other_corpus)
    b = subprocess.run(
        _shardfuzz(
            "--target",
            "faults:PerturbOnTwoRanks",
            "--max-cases",
            "1",
            "--seed",
            "2",
            "--corpus",
            other_corpus,
            "--database",
            redis_url,
            "--report",
            second,
            "--no-confirm",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    replayed = _report(second)
    assert b.returncode == 1, b.stderr
    assert replayed["replayed_from_database"] >= 1
    shared = {f["signature"] for f in replayed["failures"] if f["from_database"]}
    assert shared and shared <= {f["signature"] for f in _report(first)["failures"]}


@pytest.mark.slow  # launchers end to end run in the slow tier (12 s); torchrun runs exported scripts in the default one
def test_torchrun_launches_a_campaign(tmp_path, corpus):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "shardfuzz",
            "run",
            "--budget",
            "60",
            "--max-cases",
            "12",
            "--seed",
            "2",
            "--corpus",
            str(corpus),
            "--database",
            "none",
            "--report",
            str(report),
            "--plain",
            "--exit-zero",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _report(report)
    assert data["launcher"] == "torchrun" and data["world_size"] == 2
    assert data["cases_run"] >= 12 and data["passed"] > 0


@pytest.mark.slow
def test_workers_run_side_by_side_and_merge(tmp_path, corpus):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        _shardfuzz(
            "--workers",
            "2",
            "--budget",
            "120",
            "--max-cases",
            "4",
            "--seed",
            "3",
            "--corpus",
            corpus,
            "--database",
            tmp_path / "db",
            "--report",
            report,
            "--report-dir",
            tmp_path / "out",
            "--exit-zero",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _report(report)
    assert data["workers"] == 2 and len(data["worker_reports"]) == 2
    assert data["cases_run"] == sum(w["cases_run"] for w in data["worker_reports"]) >= 8
    assert (tmp_path / "out" / "junit.xml").exists()
