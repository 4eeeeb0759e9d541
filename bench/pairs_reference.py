"""Draw many cases without running any and count the pairs of dimension values they reach: a denominator for
pairwise coverage that does not depend on a run (``shardfuzz.search.pairs``).

    python bench/pairs_reference.py --draws 20000 --world-size 4 --out /tmp/pairs-ref.txt
    python bench/pairs_reference.py --reference /tmp/pairs-ref.txt run-a.pairs run-b.pairs

The first prints how many pairs the draws reached as they went (the curve says how near the sample is to every
pair the strategies can reach); the second, what share of the reference each run's ``--pairs`` file holds, and
which values the run drew fewer than 10 times (from its ``--report``, when given beside it as RUN.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def draw_pairs(draws: int, world_size: int, seed: int, checkpoints: list[int]) -> set[tuple[str, str]]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from shardfuzz.case import dimensions
    from shardfuzz.search.pairs import pairs_of
    from shardfuzz.strategies import cases
    from shardfuzz.targets import DEFAULT_TARGET, support_for

    pairs: set[tuple[str, str]] = set()
    count = [0]
    started = time.monotonic()

    @settings(max_examples=draws, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(cases(max_world_size=world_size, support=support_for(DEFAULT_TARGET)))
    def collect(case):
        pairs.update(pairs_of(dimensions(case)))
        count[0] += 1
        if count[0] in checkpoints:
            print(f"  {count[0]:>7} draws: {len(pairs):>7} pairs ({time.monotonic() - started:.0f} s)", flush=True)

    while count[0] < draws:
        collect()
    return pairs


def read_pairs(path: Path) -> set[tuple[str, str]]:
    return {tuple(line.split("\t")) for line in path.read_text().splitlines() if line}  # type: ignore[misc]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the reference pairs here")
    parser.add_argument("--reference", type=Path, default=None, help="a reference written by --out")
    parser.add_argument("runs", nargs="*", type=Path, help="pairs files written by shardfuzz run --pairs")
    args = parser.parse_args(argv)
    if args.reference is None:
        marks = sorted({1000, 2000, 5000, 10000, 20000, 50000, args.draws})
        pairs = draw_pairs(args.draws, args.world_size, args.seed, [m for m in marks if m <= args.draws])
        if args.out is not None:
            args.out.write_text("".join(f"{a}\t{b}\n" for a, b in sorted(pairs)))
        print(f"{len(pairs)} pairs in {args.draws} draws at world size {args.world_size}")
        return 0
    reference = read_pairs(args.reference)
    for run in args.runs:
        reached = read_pairs(run)
        print(
            f"{run}: {len(reached & reference)}/{len(reference)} reference pairs ({len(reached & reference) / len(reference):.1%}); {len(reached - reference)} pairs beyond the reference"
        )
        report = run.with_suffix(".json")
        if report.exists():
            coverage = json.loads(report.read_text())["coverage"]
            offered = json.loads(report.read_text()).get("coverage_offered", {})
            rare = sorted(
                (n, f"{dim}={value}")
                for dim, values in offered.items()
                for value in values
                if (n := coverage.get(dim, {}).get(value, 0)) < 10
            )
            print(f"  values drawn fewer than 10 times: {len(rare)}: {', '.join(f'{v} ({n})' for n, v in rare) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
