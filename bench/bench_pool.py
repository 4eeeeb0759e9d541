"""Time the same round-trip cases three ways and print cases/s and the ratios.

1. warm pool: ``RankPool.run`` per case (ranks and process group reused).
2. spawn per case: a fresh pool (processes + process group) for every case,
   as PyTorch's own multi-process test harness does.
3. bare loop: the ranks call ``run_case`` (build, train, get_state_dict,
   dcp.save, barrier, rebuild, dcp.load, set_state_dict, gather, compare) over
   the same cases with nothing around it: no pipes, no JSON, no verdicts.

All three do a warm-up pass first, so one-off lazy initialisation in torch is
not charged to any of them. Only cases that pass are timed (a failing case
costs a process-group reset in the pool, which is not what this measures).

    python bench/bench_pool.py --world-size 4 --cases 40

The warm pool's time is also given by kind of case: ``plain``, ``tp`` (a side with tensor
parallelism) and ``compiled`` (a side through ``torch.compile``).

``--other-python PATH`` also times the same cases saved on ranks of that Python and loaded on
this one's (``CrossVersionPool``, two warm pools; this Python's path measures the two pools'
cost alone): only cases that pass both ways are timed.

    python bench/bench_pool.py --world-size 4 --other-python "$(shardfuzz torch-env 2.10.0)"

``--write-cases FILE`` keeps the drawn cases (one JSON per line) and ``--cases-file FILE`` times those
instead of drawing: the same cases timed on two versions of shardfuzz (a change that adds dimensions
changes what a seed draws), e.g. from a git worktree of the old commit and then this one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time


def draw_cases(n: int, world_size: int, seed: int, *, vary_storage: bool = True):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from shardfuzz.strategies import cases

    drawn = []

    @settings(max_examples=n, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(cases(max_world_size=world_size, vary_storage=vary_storage))
    def collect(case):
        drawn.append(case)

    while len(drawn) < n:  # a run can stop early (e.g. when it exhausts small inputs)
        collect()
    return drawn[:n]


def bare_rank(rank, world_size, store, case_texts, dirs, queue):
    import warnings

    warnings.simplefilter("ignore")
    import torch
    import torch.distributed as dist

    from shardfuzz.case import loads
    from shardfuzz.rank.roundtrip import RankContext, run_case
    from shardfuzz.targets import DcpTarget

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    ctx = RankContext(rank, world_size)
    ctx.create_groups()
    target = DcpTarget()
    cases = [loads(t) for t in case_texts]
    for attempt in ("warmup", "timed"):
        dist.barrier()
        started = time.perf_counter()
        for case, directory in zip(cases, dirs[attempt]):
            run_case(case, ctx, target, directory)
        dist.barrier()
        if rank == 0 and attempt == "timed":
            queue.put(time.perf_counter() - started)
    dist.destroy_process_group()


def time_bare(cases, world_size: int) -> float:
    from shardfuzz.case import dumps
    from shardfuzz.executor.pool import scratch_root

    scratch = tempfile.mkdtemp(prefix="shardfuzz-bench-", dir=scratch_root())
    try:
        dirs = {a: [os.path.join(scratch, f"{a}-{i}") for i in range(len(cases))] for a in ("warmup", "timed")}
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        texts = [dumps(c) for c in cases]
        procs = [
            ctx.Process(target=bare_rank, args=(r, world_size, os.path.join(scratch, "store"), texts, dirs, queue))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        seconds = queue.get(timeout=1800)
        for p in procs:
            p.join(60)
        return seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def rss_run(n: int, world_size: int, seed: int, *, without_crashers: bool = False) -> int:
    """Resident memory of all ranks together over ``n`` drawn cases on one pool.

    A crash restarts the ranks (fresh processes, fresh memory); ``without_crashers``
    leaves out the cases with the ``full-offload`` check, which meets a known FSDP1
    segfault, so the same processes run (nearly) every case.
    """
    from shardfuzz.executor import RankPool

    drawn = draw_cases(n * 2 if without_crashers else n, world_size, seed)
    if without_crashers:
        drawn = [c for c in drawn if "full-offload" not in c.checks][:n]
    samples = []
    longest = stretch = 0
    with RankPool(world_size) as pool:
        start_rss = pool.rss_bytes()
        started = time.perf_counter()
        for i, case in enumerate(drawn, start=1):
            starts = pool.starts
            pool.run(case)
            stretch = stretch + 1 if pool.starts == starts else 0
            longest = max(longest, stretch)
            if i % 100 == 0 or i == len(drawn):
                samples.append((i, pool.rss_bytes(), pool.starts))
        wall = time.perf_counter() - started
    print(
        f"world size {world_size}: {len(drawn)} cases in {wall:.0f}s; ranks' RSS at start {start_rss / 2**20:.0f} MiB; "
        f"longest run of cases on the same rank processes: {longest}"
    )
    for i, rss, starts in samples:
        print(f"  after {i:5} cases: {rss / 2**20:7.0f} MiB  (pool starts so far: {starts})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--spawn-cases", type=int, default=4, help="cases timed with spawn-per-case (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rss-cases",
        type=int,
        default=0,
        help="also run this many drawn cases on one warm pool and report the ranks' memory",
    )
    parser.add_argument(
        "--without-crashers",
        action="store_true",
        help="with --rss-cases: leave out cases that meet the known FSDP1 segfault",
    )
    parser.add_argument("--write-cases", default=None, help="write the drawn cases here, one JSON per line")
    parser.add_argument("--cases-file", default=None, help="time these cases (one JSON per line) instead of drawing")
    parser.add_argument(
        "--other-python",
        default=None,
        help="also time the cases saved under this Python's torch and loaded under this one's",
    )
    args = parser.parse_args(argv)
    if args.rss_cases:
        return rss_run(args.rss_cases, args.world_size, args.seed, without_crashers=args.without_crashers)

    from shardfuzz.case import dumps, loads
    from shardfuzz.executor import RankPool

    if args.cases_file:
        with open(args.cases_file) as lines:
            drawn = [loads(line) for line in lines if line.strip()]
    else:
        drawn = draw_cases(args.cases * 3, args.world_size, args.seed)
    if args.write_cases:
        with open(args.write_cases, "w") as out:
            out.writelines(dumps(case) + "\n" for case in drawn)
    with RankPool(args.world_size) as pool:
        passing = [c for c in drawn if pool.run(c).ok][: args.cases]  # also the warm-up pass
        across = time_across(args.other_python, passing, args.world_size) if args.other_python else None
        if across is not None:
            passing = across[0]
        by_kind: dict[str, list[float]] = {}
        started = time.perf_counter()
        for case in passing:
            began = time.perf_counter()
            verdict = pool.run(case)
            assert verdict.ok, verdict.summary()
            by_kind.setdefault(case_kind(case), []).append(time.perf_counter() - began)
        warm = (time.perf_counter() - started) / len(passing)

    bare = time_bare(passing, args.world_size) / len(passing)

    spawn_times = []
    for case in passing[: args.spawn_cases]:
        started = time.perf_counter()
        with RankPool(args.world_size) as fresh:
            assert fresh.run(case).ok
        spawn_times.append(time.perf_counter() - started)
    spawn = statistics.mean(spawn_times)

    import torch

    print(
        f"torch {torch.__version__}, world size {args.world_size}, {len(passing)} passing cases, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(f"  warm pool       {1 / warm:7.2f} cases/s  {warm * 1000:8.1f} ms/case")
    print(f"  bare loop       {1 / bare:7.2f} cases/s  {bare * 1000:8.1f} ms/case")
    print(f"  spawn per case  {1 / spawn:7.2f} cases/s  {spawn * 1000:8.1f} ms/case  ({len(spawn_times)} cases)")
    for kind, times in sorted(by_kind.items()):
        mean = statistics.mean(times)
        print(f"    {kind:<13} {1 / mean:7.2f} cases/s  {mean * 1000:8.1f} ms/case  ({len(times)} cases, warm pool)")
    print(f"  warm pool / bare loop time per case: {warm / bare:.2f}x   (target <= 1.3x)")
    print(f"  warm pool speed-up over spawn-per-case: {spawn / warm:.1f}x   (target >= 30x)")
    if across is not None:
        cross, other = across[1] / len(passing), across[2]
        print(f"  across torches  {1 / cross:7.2f} cases/s  {cross * 1000:8.1f} ms/case  (saved under {other})")
        print(f"  across torches / warm pool time per case: {cross / warm:.2f}x")
    return 0


def case_kind(case) -> str:
    """``tp`` (a side with tensor parallelism), ``compiled`` (a side through torch.compile), ``loop`` (a training-loop
    pattern: a held state dict, a second round-trip, a lenient load), or ``plain``."""
    sides = (case.save, case.load)
    if getattr(case, "loop", None) is not None and case.loop.dimensions() != type(case.loop)().dimensions():
        return "loop"
    if any(type(side.engine).__name__ == "TP" for side in sides):
        return "tp"
    return "compiled" if any(side.compiled for side in sides) else "plain"


def time_across(python: str, cases, world_size: int):
    """(the cases that pass saved under ``python`` and loaded here, seconds for them all, its torch)."""
    from shardfuzz.executor.cross import CrossVersionPool
    from shardfuzz.executor.interpreters import probe

    other, here = probe(python), probe(sys.executable)
    with CrossVersionPool(world_size, save=other, load=here) as pool:
        passing = [c for c in cases if pool.run(c).ok]  # also the warm-up pass
        started = time.perf_counter()
        for case in passing:
            verdict = pool.run(case)
            assert verdict.ok, verdict.summary()
        return passing, time.perf_counter() - started, other.torch_version


if __name__ == "__main__":
    raise SystemExit(main())
