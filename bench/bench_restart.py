"""Time a warm pool's restart: what a crash or a hang costs before the next case can run.

A restart stops every rank and starts them afresh: processes, torch (imported again unless a forkserver
already holds it), the process group, and the warm-up round-trip.

    python bench/bench_restart.py --world-size 4 --restarts 5 [--spawn]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from shardfuzz.executor import RankPool, rank_processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--spawn", action="store_true", help="spawn every rank (no forkserver), for comparison")
    args = parser.parse_args()
    if args.spawn:
        rank_processes._context = lambda interpreter: multiprocessing.get_context("spawn")
    pool = RankPool(args.world_size)
    started = time.perf_counter()
    pool.start()
    first = time.perf_counter() - started
    times = []
    try:
        for _ in range(args.restarts):
            pool.close()
            started = time.perf_counter()
            pool.start()
            times.append(time.perf_counter() - started)
    finally:
        pool.close()
    print(
        f"first start {first:.2f} s; restart median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}, {len(times)} restarts of {args.world_size} ranks)"
    )


if __name__ == "__main__":
    main()
