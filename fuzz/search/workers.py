"""``shardfuzz run --workers N``: N campaigns at once, each with its own pool of ranks.

Each worker is a ``shardfuzz run`` child process with its own seed and pool,
sharing the corpus directory and the example database, so what one finds the
others replay when they next start a campaign. The parent shows their progress
from the reports they flush every few seconds, passes SIGINT/SIGTERM on as
SIGTERM (a graceful stop), and merges their reports into one when they end.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shardfuzz.executor.stop import EXIT_CODES, StopFlag
from shardfuzz.findings.run_report import merge_reports, read_report
from shardfuzz.search.progress import Progress
from shardfuzz.search.run_config import RunConfig

__all__ = ["run_workers"]


def run_workers(config: RunConfig) -> int:
    """``config.workers`` campaigns, each a ``shardfuzz run`` child with the options of ``config.for_worker``."""
    import torch

    from shardfuzz.findings.report_output import print_summary, write_reports

    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    scratch = Path(tempfile.mkdtemp(prefix="shardfuzz-workers-"))
    reports = [scratch / f"worker-{i}.json" for i in range(config.workers)]
    logs = [scratch / f"worker-{i}.log" for i in range(config.workers)]
    children = [
        _start_worker(config, index, seed=seed + index, report=reports[index], log=logs[index])
        for index in range(config.workers)
    ]
    meta = {
        "torch": torch.__version__,
        "budget_seconds": config.budget,
        "seed": seed,
        "world_size": config.world_size,
        "target": config.target,
        "launcher": "pool",
        "database": config.database,
    }
    progress = Progress(config.budget, plain=config.plain)
    stop = StopFlag()
    with stop:
        try:
            _watch(children, stop, progress, reports, meta=meta)
        except KeyboardInterrupt:
            for child in children:
                child.kill()
            progress.finish()
            print(f"\nshardfuzz run: interrupted twice; workers killed (their logs: {scratch})", file=sys.stderr)
            return 130
    codes = [child.returncode for child in children]
    report = merge_reports(_flushed(reports), meta=meta)
    progress.finish(report)
    broken = [i for i, code in enumerate(codes) if code not in (0, 1, *EXIT_CODES.values()) or not reports[i].exists()]
    for index in broken:
        tail = logs[index].read_text(errors="replace").strip().splitlines()[-15:]
        print(
            f"shardfuzz run: worker {index} exited with {codes[index]} (log {logs[index]}); its last output:\n  "
            + "\n  ".join(tail),
            file=sys.stderr,
        )
    if not broken:
        shutil.rmtree(scratch, ignore_errors=True)
    write_reports(report, json_path=config.report, directory=config.report_dir)
    print_summary(report)
    print(
        f"shardfuzz: {config.workers} workers; per worker: "
        + ", ".join(f"{r.get('cases_run')} cases" for r in report["worker_reports"])
    )
    if stop.reason:
        return EXIT_CODES[stop.reason]
    if broken:
        return 2
    return 1 if report["failures"] and not config.exit_zero else 0


def _start_worker(config: RunConfig, index: int, *, seed: int, report: Path, log: Path) -> subprocess.Popen:
    """Worker ``index``: a ``shardfuzz run`` child with its own seed and report, its output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shardfuzz", "run", *config.for_worker(index, seed=seed, report=report).argv()],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _flushed(reports: list[Path]) -> list[dict]:
    """The workers' reports flushed so far."""
    found = []
    for path in reports:
        try:
            found.append(read_report(path))
        except ValueError:
            pass  # not flushed yet
    return found


def _watch(
    children: list[subprocess.Popen], stop: StopFlag, progress: Progress, reports: list[Path], *, meta: dict
) -> None:
    """Until every worker has ended: pass a stop on to them (once, as SIGTERM), and show their merged progress."""
    forwarded = False
    while any(child.poll() is None for child in children):
        if stop and not forwarded:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            forwarded = True
            progress.message(f"shardfuzz run: {stop.reason}: asking {len(children)} workers to stop")
        if progress.due():
            found = _flushed(reports)
            if found:
                progress.show(merge_reports(found, meta=meta))
        time.sleep(0.2)
