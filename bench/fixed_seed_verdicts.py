"""Every case of one fixed draw with its verdict: to show that a refactor changed no behaviour.

Draws ``--cases`` cases from ``strategies.cases`` with a fixed Hypothesis seed (no
database, generation only, no steering), runs each on a warm pool, and writes one
line per case: the case's JSON digest, its status and its canonical signature.
Run it before and after a change, then compare the two files:

    python bench/fixed_seed_verdicts.py --out /tmp/before.jsonl
    ... change the code ...
    python bench/fixed_seed_verdicts.py --out /tmp/after.jsonl --compare /tmp/before.jsonl

An older checkout can be measured with ``PYTHONPATH`` pointing at a folder where
``shardfuzz`` links to its ``fuzz/`` (and ``shardfuzz/strategies`` to its ``strategies/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per case")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier --out to compare with")
    args = parser.parse_args()

    from _draws import for_each_drawn_case

    import shardfuzz
    from shardfuzz.case import to_dict
    from shardfuzz.executor import RankPool
    from shardfuzz.strategies import cases

    print(f"shardfuzz from {Path(shardfuzz.__file__).parent}", flush=True)
    lines: list[dict] = []
    with RankPool(args.world_size) as pool:

        def run(case) -> None:
            text = json.dumps(to_dict(case), sort_keys=True)
            verdict = pool.run(case)
            lines.append(
                {
                    "case": hashlib.sha256(text.encode()).hexdigest()[:16],
                    "status": verdict.status,
                    "signature": verdict.signature() if verdict.is_failure else "",
                }
            )

        for_each_drawn_case(cases(max_world_size=args.world_size), examples=args.cases, seed=args.seed, run=run)
    args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    statuses: dict[str, int] = {}
    for line in lines:
        statuses[line["status"]] = statuses.get(line["status"], 0) + 1
    print(f"{len(lines)} cases: {statuses}")
    if args.compare is None:
        return
    before = [json.loads(line) for line in args.compare.read_text().splitlines()]
    drawn_alike = sum(a["case"] == b["case"] for a, b in zip(before, lines))
    same = sum(a == b for a, b in zip(before, lines))
    print(f"compared with {args.compare}: {len(before)} cases there, {drawn_alike} drawn alike, {same} same verdict")
    for i, (a, b) in enumerate(zip(before, lines)):
        if a != b:
            print(f"  case {i}: before {a}\n          after  {b}")


if __name__ == "__main__":
    main()
