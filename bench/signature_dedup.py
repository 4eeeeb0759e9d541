"""Signatures per bug, before and after a change to how signatures are made.

A labelled set: each mutant of the self-test catalogue (one known bug each) is run
on the same fixed draw of cases; every failure that is not a known torch bug is
the mutant's. For each mutant this counts the distinct signatures its failures
got under two signature functions: the current one, and the one in
``--before`` (a ``verdict.py`` from an older shardfuzz, e.g. ``git show
f252b55:fuzz/verdict.py > /tmp/old_verdict.py``). One bug should have one
signature; two bugs must not share one, so it also lists signatures that more
than one mutant produced, under each function. The corpus's entries are a second
labelled set: entries that are one bug (the same ``known`` description) and
entries that are different bugs.

    python bench/signature_dedup.py --before /tmp/old_verdict.py --cases 40 --world-size 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _old_module(path: Path):
    spec = importlib.util.spec_from_file_location("old_verdict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _old_signature(old, verdict) -> str:
    """The signature the older code gives the same verdict (its classes take the same fields)."""
    mismatches = tuple(
        old.Mismatch(**{f: getattr(m, f) for f in ("oracle", "key", "rank", "detail", "index", "expected", "actual")})
        for m in verdict.mismatches
    )
    errors = tuple(old.RankError(e.rank, e.phase, e.type, e.message, e.traceback) for e in verdict.errors)
    return old.Verdict(
        verdict.status, mismatches, errors, verdict.detail, verdict.seconds, verdict.where, verdict.how
    ).signature()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="an older verdict.py to compare with")
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--mutant", action="append", default=None, help="only these (repeatable)")
    args = parser.parse_args()

    import torch
    from _draws import for_each_drawn_case

    from shardfuzz.executor import RankPool
    from shardfuzz.findings.corpus import known_bugs, load_corpus
    from shardfuzz.strategies import cases
    from shardfuzz.targets.mutants import CATALOGUE

    old = _old_module(args.before)
    entries = load_corpus(ROOT / "corpus")[0]
    known = known_bugs(entries, torch.__version__)
    per_mutant: dict[str, dict[str, set[str]]] = {}
    for name in args.mutant or CATALOGUE:
        signatures = {"before": set(), "after": set()}
        with RankPool(args.world_size, target=f"shardfuzz.targets.mutants:{name}") as pool:

            def run(case, pool=pool, signatures=signatures) -> None:
                verdict = pool.run(case)
                if verdict.is_failure and known.lookup(verdict.signature(), case) is None:
                    signatures["after"].add(verdict.signature())
                    signatures["before"].add(_old_signature(old, verdict))

            strategy = cases(max_world_size=args.world_size, vary_storage=False)
            for_each_drawn_case(strategy, examples=args.cases, seed=args.seed, run=run)
        per_mutant[name] = signatures
        print(f"{name:30} before {len(signatures['before']):2}  after {len(signatures['after']):2}", flush=True)

    def shared(which: str) -> dict[str, list[str]]:
        owners = defaultdict(set)
        for name, signatures in per_mutant.items():
            for signature in signatures[which]:
                owners[signature].add(name)
        return {s: sorted(n) for s, n in owners.items() if len(n) > 1}

    # The corpus: entries with the same known description are one bug.
    by_bug = defaultdict(list)
    for path, entry in entries:
        if entry.known is not None:
            by_bug[entry.known.description[:120]].append(
                (path.stem, json.loads(path.read_text())["signature"], entry.signature)
            )
    corpus = {
        "bugs": len(by_bug),
        "signatures_before": sum(len({raw for _, raw, _ in items}) for items in by_bug.values()),
        "signatures_after": sum(len({canon for _, _, canon in items}) for items in by_bug.values()),
    }
    after_owner = defaultdict(set)
    for description, items in by_bug.items():
        for _, _, canon in items:
            after_owner[canon].add(description)
    corpus["signatures_shared_by_different_bugs_after"] = {s: sorted(d) for s, d in after_owner.items() if len(d) > 1}
    summary = {
        "cases_per_mutant": args.cases,
        "world_size": args.world_size,
        "torch": torch.__version__,
        "mutants": {
            n: {
                "before": len(s["before"]),
                "after": len(s["after"]),
                "signatures_after": sorted(s["after"]),
                "signatures_before": sorted(s["before"]),
            }
            for n, s in per_mutant.items()
        },
        "mean_signatures_per_mutant": {
            w: sum(len(s[w]) for s in per_mutant.values()) / len(per_mutant) for w in ("before", "after")
        },
        "shared_between_mutants": {"before": shared("before"), "after": shared("after")},
        "corpus": corpus,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "mutants"}, indent=2))
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
