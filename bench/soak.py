"""Soak the executor: N cases with a rank crash every 10th case and a hang every 25th.

Crashes rotate through a segfault, an abort, ``os._exit`` and SIGKILL (as the
OOM killer sends); every 50th case also leaves an abort armed for process exit,
so pool restarts meet crashes in process-group teardown. Then it checks:

- the runner is alive and ran every case;
- every injected crash is a ``crash`` verdict and every injected hang a ``hang``
  (with the stuck rank's Python stack in its diagnostics);
- no clean case failed (a pass, or a known torch bug from the corpus);
- no rank process, scratch directory or checkpoint is left behind.

    python bench/soak.py --cases 1000 --world-size 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fault targets; spawned ranks inherit sys.path
sys.path.insert(0, str(ROOT / "bench"))

from bench_pool import draw_cases  # noqa: E402

CRASHES = ("segfault", "abort", "exit", "sigkill")


def _on_every_rank(side, world_size: int):
    """``side`` on a 1-D mesh of every rank; DDP stands in for engines that cannot run there
    (a one-rank plain module, an HSDP mesh)."""
    import attrs

    from shardfuzz.case import DDP, FSDP1, Unsharded

    if isinstance(side.engine, Unsharded) or (isinstance(side.engine, FSDP1) and side.engine.hybrid):
        return attrs.evolve(side, engine=DDP(), mesh_shape=(world_size,), wrap=())
    return attrs.evolve(side, mesh_shape=(world_size,))


def instruction(i: int) -> str:
    """What case ``i`` (1-based) injects."""
    if i % 25 == 0:
        return "hang"
    if i % 10 == 0:
        return f"crash:{CRASHES[(i // 10) % len(CRASHES)]}"
    if i % 50 == 5:
        return "teardown"
    return ""


_STACK = "most recent call first"  # faulthandler's header for each thread


def children_of(pid: int) -> list[str]:
    """Live child processes of ``pid`` as "pid cmdline", but multiprocessing's resource tracker.

    The tracker is one helper per parent process that lives as long as the parent
    and unlinks any shared memory a dead child leaked: it is the leak guard, not a leak.
    """
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            cmdline = Path(stat).with_name("cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and "resource_tracker" not in cmdline:
            found.append(f"{stat.split('/')[2]} {cmdline[:100]}")
    return found


def soak(cases: int = 1000, world_size: int = 2, seed: int = 0, hang_timeout: float = 6.0, quiet: bool = False):
    """Run the soak; return a dict of counts and the list of problems (empty when it passed)."""
    import attrs
    import faults
    import torch

    from shardfuzz.executor import RankPool
    from shardfuzz.executor.pool import scratch_root
    from shardfuzz.findings.corpus import known_bugs, load_corpus

    known = known_bugs(load_corpus(ROOT / "corpus")[0], torch.__version__)
    control = tempfile.NamedTemporaryFile("w", prefix="shardfuzz-soak-", delete=False)
    control.close()
    os.environ[faults.SOAK_CONTROL] = control.name
    drawn = draw_cases(cases, world_size, seed, vary_storage=False)  # the fault target does its own I/O
    counts: Counter = Counter()
    problems: list[str] = []
    peak_rss = 0
    started = time.monotonic()
    children_before = set(children_of(os.getpid()))  # e.g. a pytest session's own pool
    dirs_before = set(glob.glob(os.path.join(scratch_root(), f"shardfuzz-pool-{os.getpid()}-*")))
    pool = RankPool(world_size, target="faults:SoakFaults", case_timeout=hang_timeout, error_grace=2.0)
    try:
        for i, case in enumerate(drawn, start=1):
            order = instruction(i)
            if order == "teardown":  # every rank takes part, so every rank arms its exit-time abort
                case = attrs.evolve(
                    case, save=_on_every_rank(case.save, world_size), load=_on_every_rank(case.load, world_size)
                )
            Path(control.name).write_text(order)
            verdict = pool.run(case)
            peak_rss = max(peak_rss, pool.rss_bytes())
            expected = "crash" if order.startswith("crash") else "hang" if order == "hang" else "clean"
            counts[f"{expected}:{verdict.status}"] += 1
            if expected == "crash" and verdict.status != "crash":
                problems.append(f"case {i}: injected {order}, got {verdict.summary()[:200]}")
            elif expected == "hang" and (verdict.status != "hang" or _STACK not in verdict.diagnostics):
                problems.append(
                    f"case {i}: injected hang, got {verdict.status} (stack dumped: {_STACK in verdict.diagnostics})"
                )
            elif expected == "clean" and verdict.is_failure and known.lookup(verdict.signature(), case) is None:
                problems.append(f"case {i}: clean case failed: {verdict.summary()[:300]}")
            if problems and not quiet and problems[-1].startswith(f"case {i}:"):
                print(problems[-1], flush=True)
            if not quiet and i % 50 == 0:
                print(f"[{time.monotonic() - started:7.1f}s] {i} cases, {dict(counts)}", flush=True)
    finally:
        pool.close()
        os.unlink(control.name)
    wall = time.monotonic() - started
    time.sleep(0.5)
    left = [c for c in children_of(os.getpid()) if c not in children_before]
    left += [f"{p.pid} {p.name}" for p in pool._procs if p.is_alive()]
    if left:
        problems.append(f"rank processes left running: {sorted(set(left))}")
    dirs = sorted(set(glob.glob(os.path.join(scratch_root(), f"shardfuzz-pool-{os.getpid()}-*"))) - dirs_before)
    if dirs:
        problems.append(f"scratch directories left behind: {dirs}")
    events = Counter(e.kind for e in pool.events)
    result = {
        "cases": cases,
        "world_size": world_size,
        "wall_seconds": round(wall, 1),
        "outcomes": dict(sorted(counts.items())),
        "pool_starts": pool.starts,
        "pool_resets": pool.resets,
        "pool_events": dict(events),
        "peak_rss_mib": round(peak_rss / 2**20, 1),
        "problems": problems,
    }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-timeout", type=float, default=6.0)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    result = soak(args.cases, args.world_size, args.seed, args.hang_timeout)
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
