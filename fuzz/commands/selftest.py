"""``shardfuzz selftest``: fuzz a catalogue of injected checkpoint bugs (mutants) and report which are killed."""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import torch

    from shardfuzz.executor import PoolStartError
    from shardfuzz.findings.corpus import known_bugs, load_corpus
    from shardfuzz.search.run_setup import campaign_devices
    from shardfuzz.search.selftest import catalogue_for, run_selftest
    from shardfuzz.targets import framework_version

    try:
        catalogue = catalogue_for(args.target)
    except ValueError as exc:
        print(f"shardfuzz selftest: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.mutant or []) - set(catalogue))
    if unknown:
        print(f"shardfuzz selftest: no such mutant(s) {unknown}; choose from {sorted(catalogue)}", file=sys.stderr)
        return 2
    _, why_not = campaign_devices(args.device)
    if why_not:
        print(f"shardfuzz selftest: {why_not}", file=sys.stderr)
        return 2
    known = known_bugs(load_corpus(args.corpus)[0], torch.__version__)
    print(f"{'mutant':30} {'result':8} {'killed by':24} {'detect s':>8} {'shrink s':>8} {'size':>5}  shrunk case")

    def show(r) -> None:
        detect = f"{r.seconds_to_detect:.1f}" if r.seconds_to_detect is not None else "-"
        shrink = "-" if r.shrink_seconds is None else f"{r.shrink_seconds:.1f}{'' if r.shrunk else '+'}"
        print(
            f"{r.mutant:30} {'KILLED' if r.killed else 'SURVIVED':8} {r.killed_by[:24]:24} {detect:>8} {shrink:>8} "
            f"{r.shrunk_case_size if r.shrunk_case_size is not None else '-':>5}  {r.shrunk_case}",
            flush=True,
        )

    started = time.monotonic()
    try:
        results = run_selftest(
            budget_per_mutant=args.budget,
            shrink_budget=args.shrink_budget,
            world_size=args.world_size,
            seed=args.seed,
            mutants=args.mutant,
            target=args.target,
            is_known=lambda s, c: known.lookup(s, c) is not None,
            on_result=show,
            device=args.device,
        )
    except PoolStartError as exc:
        print(f"shardfuzz selftest: {exc}", file=sys.stderr)
        return 2
    killed = sum(r.killed for r in results)
    print(
        f"kill rate {killed}/{len(results)} ({100 * killed / len(results):.0f}%) in {time.monotonic() - started:.0f}s "
        f"on torch {torch.__version__}, {args.budget:g}s per mutant to find it and {args.shrink_budget:g}s to shrink it, "
        f"{args.world_size} ranks (shrink s with a +: cut short)"
    )
    if args.report:
        args.report.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "target": args.target or "dcp",
                    "target_framework": framework_version(args.target) if args.target else "",
                    "budget_per_mutant": args.budget,
                    "world_size": args.world_size,
                    "device": args.device,
                    "killed": killed,
                    "total": len(results),
                    "mutants": [r.as_dict() for r in results],
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if killed == len(results) else 1
