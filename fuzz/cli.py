"""``shardfuzz run | replay | export | capabilities``: the command line.

``run`` exits 0 when no new failure was found, 1 when one was (each is saved to
the corpus), 2 for bad options or a pool that cannot start. ``replay`` exits 0
when every entry behaved as recorded, 1 when one now passes, changed or is
flaky. ``export`` writes a standalone torch-only reproducer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _world_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} ranks: choose 1 to 64")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardfuzz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="fuzz save/load round-trips for a time budget")
    run.add_argument("--budget", type=_positive_float, default=60.0, help="seconds to spend drawing cases (default 60)")
    run.add_argument("--seed", type=int, default=None, help="seed for the case draws (default: random)")
    run.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    run.add_argument("--corpus", type=Path, default=Path("corpus"), help="directory of corpus entries (default ./corpus)")
    run.add_argument("--world-size", type=_world_size, default=4, help="ranks in the pool; cases use 1..N (default 4)")
    run.add_argument("--target", default=None, help="checkpoint code under test, 'module:attribute' (default: DCP)")
    run.add_argument("--case-timeout", type=_positive_float, default=None,
                     help="seconds before a case counts as hung (default: from the case's size, 30 s and up)")
    run.add_argument("--no-confirm", action="store_true",
                     help="report failures without re-running them on a fresh pool first")
    run.add_argument("--exit-zero", action="store_true",
                     help="exit 0 even when new failures are found (a smoke run: they are in the corpus and report)")

    replay = commands.add_parser("replay", help="re-run corpus entries: still failing, now passing, changed, flaky")
    replay.add_argument("paths", nargs="*", type=Path, default=[Path("corpus")],
                        help="entry files or corpus directories (default ./corpus)")
    replay.add_argument("--repeat", type=_world_size, default=1,
                        help="runs per entry; verdicts that disagree mark it flaky (default 1)")
    replay.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    replay.add_argument("--case-timeout", type=_positive_float, default=None,
                        help="seconds before a case counts as hung (default: from the case's size)")

    export = commands.add_parser("export", help="write a corpus entry as a standalone torch-only script")
    export.add_argument("entry", type=Path, help="the corpus entry (a .json file)")
    export.add_argument("-o", "--output", type=Path, default=None, help="script path (default: stdout)")

    selftest = commands.add_parser("selftest", help="fuzz a catalogue of injected checkpoint bugs; report kills")
    selftest.add_argument("--budget", type=_positive_float, default=40.0,
                          help="seconds per mutant to find and shrink it (default 40)")
    selftest.add_argument("--world-size", type=_world_size, default=2, help="ranks in each pool (default 2)")
    selftest.add_argument("--seed", type=int, default=0, help="seed for the case draws (default 0)")
    selftest.add_argument("--mutant", action="append", default=None,
                          help="only this mutant (repeatable; default: the whole catalogue)")
    selftest.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    selftest.add_argument("--corpus", type=Path, default=Path("corpus"),
                          help="known torch bugs here are not counted as kills (default ./corpus)")

    commands.add_parser("capabilities", help="list what the installed torch offers to the fuzzer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "capabilities":
        return _capabilities()
    if args.command == "replay":
        return _replay(args)
    if args.command == "export":
        return _export(args)
    if args.command == "selftest":
        return _selftest(args)
    return _run(args)


def _selftest(args) -> int:
    import torch

    from shardfuzz.corpus import known_bugs, load_corpus
    from shardfuzz.executor import PoolStartError
    from shardfuzz.mutants import CATALOGUE
    from shardfuzz.selftest import run_selftest

    unknown = sorted(set(args.mutant or []) - set(CATALOGUE))
    if unknown:
        print(f"shardfuzz selftest: no such mutant(s) {unknown}; choose from {sorted(CATALOGUE)}", file=sys.stderr)
        return 2
    known = known_bugs(load_corpus(args.corpus)[0], torch.__version__)
    print(f"{'mutant':30} {'result':8} {'killed by':24} {'detect s':>8} {'size':>5}  shrunk case")

    def show(r) -> None:
        detect = f"{r.seconds_to_detect:.1f}" if r.seconds_to_detect is not None else "-"
        print(f"{r.mutant:30} {'KILLED' if r.killed else 'SURVIVED':8} {r.killed_by[:24]:24} {detect:>8} "
              f"{r.shrunk_case_size if r.shrunk_case_size is not None else '-':>5}  {r.shrunk_case}", flush=True)

    started = time.monotonic()
    try:
        results = run_selftest(budget_per_mutant=args.budget, world_size=args.world_size, seed=args.seed,
                               mutants=args.mutant, is_known=lambda s, c: known.lookup(s, c) is not None,
                               on_result=show)
    except PoolStartError as exc:
        print(f"shardfuzz selftest: {exc}", file=sys.stderr)
        return 2
    killed = sum(r.killed for r in results)
    print(f"kill rate {killed}/{len(results)} ({100 * killed / len(results):.0f}%) in {time.monotonic() - started:.0f}s "
          f"on torch {torch.__version__}, {args.budget:g}s per mutant, {args.world_size} ranks")
    if args.report:
        args.report.write_text(json.dumps({"torch": torch.__version__, "budget_per_mutant": args.budget,
                                           "world_size": args.world_size, "killed": killed, "total": len(results),
                                           "mutants": [r.as_dict() for r in results]}, indent=2) + "\n")
    return 0 if killed == len(results) else 1


def _entries_at(paths: list[Path]):
    """Entries from files and directories; unreadable files and missing paths as problems."""
    from shardfuzz.corpus import CorpusError, load_corpus, load_entry

    entries, problems = [], []
    for path in paths:
        if path.is_dir():
            found, bad = load_corpus(path)
            entries += found
            problems += bad
        elif path.exists():
            try:
                entries.append((path, load_entry(path)))
            except CorpusError as exc:
                problems.append(str(exc))
        else:
            problems.append(f"{path}: no such file or directory")
    return entries, problems


def _replay(args) -> int:
    from shardfuzz.executor import PoolStartError, RankPool
    from shardfuzz.replay import replay_entries

    entries, problems = _entries_at(args.paths)
    for problem in problems:
        print(f"shardfuzz replay: skipping {problem}", file=sys.stderr)
    if not entries:
        print("shardfuzz replay: no corpus entries to replay", file=sys.stderr)
        return 2
    sizes: dict[str, int] = {}
    for _, entry in entries:
        sizes[entry.target] = max(sizes.get(entry.target, 1), entry.replay_world_size)
    pools: dict[str, RankPool] = {}

    def pool_for(target: str, world_size: int) -> RankPool:
        if target not in pools:
            pools[target] = RankPool(sizes[target], target=target, case_timeout=args.case_timeout)
        return pools[target]

    def show(replay) -> None:
        mark = "ok  " if replay.outcome == "still failing" else "NOTE"
        print(f"{mark} {replay.outcome:13} {replay.path.name}  {replay.entry.title[:110]}")
        if replay.outcome != "still failing":
            for verdict in replay.verdicts[:3]:
                print(f"       now: {verdict.summary()[:160]}")

    try:
        replays = replay_entries(entries, pool_for, repeat=args.repeat, on_replay=show)
    except PoolStartError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    finally:
        for pool in pools.values():
            pool.close()
    if args.report:
        args.report.write_text(json.dumps({"repeat": args.repeat, "problems": problems,
                                           "entries": [r.as_dict() for r in replays]}, indent=2) + "\n")
    return 0 if all(r.outcome == "still failing" for r in replays) else 1


def _export(args) -> int:
    from shardfuzz.corpus import CorpusError, load_entry
    from shardfuzz.export import export_script

    try:
        entry = load_entry(args.entry)
    except CorpusError as exc:
        print(f"shardfuzz export: {exc}", file=sys.stderr)
        return 2
    script = export_script(entry, filename=args.output.name if args.output else "repro.py")
    if args.output is None:
        sys.stdout.write(script)
    else:
        args.output.write_text(script)
        print(f"wrote {args.output}: run it with `python {args.output}` or "
              f"`torchrun --nproc-per-node {entry.case.world_size} {args.output}`", file=sys.stderr)
    return 0


def _capabilities() -> int:
    from shardfuzz.capabilities import capabilities

    caps = capabilities()
    print(f"torch {caps.torch_version}")
    for feature, state, why in caps.table():
        print(f"  {state:3}  {feature}{'  (' + why + ')' if why else ''}")
    return 0


def _run(args) -> int:
    import torch

    from shardfuzz.campaign import run_campaign
    from shardfuzz.case import to_dict
    from shardfuzz.corpus import entry_for, known_bugs, load_corpus, save_entry
    from shardfuzz.executor import PoolStartError, RankPool
    from shardfuzz.targets import DEFAULT_TARGET, resolve_target

    target = args.target or DEFAULT_TARGET
    try:
        resolve_target(target)  # fail here, with the spec named, rather than in every rank
    except ValueError as exc:
        print(f"shardfuzz run: {exc}", file=sys.stderr)
        return 2

    entries, problems = load_corpus(args.corpus)
    for problem in problems:
        print(f"shardfuzz: skipping corpus file: {problem}", file=sys.stderr)
    known = known_bugs(entries, torch.__version__)

    progress = _Progress(args.budget)
    new_files: dict[str, str] = {}

    def on_finding(finding) -> None:
        path = save_entry(args.corpus, entry_for(finding.case, finding.verdict, target=target, other=finding.other,
                                                   world_size=args.world_size))
        new_files[finding.signature] = str(path)
        progress.message(f"NEW [{finding.verdict.triage}] {finding.verdict.summary()[:150]}\n     saved {path}")

    started = time.monotonic()
    try:
        with RankPool(args.world_size, target=target, case_timeout=args.case_timeout) as pool:

            def on_fresh_pool(case):
                pool.close()  # the next run starts new ranks: no state carried over from earlier cases
                return pool.run(case)

            result = run_campaign(
                pool.run, budget=args.budget, seed=args.seed, max_world_size=args.world_size,
                is_known=lambda s, c: known.lookup(s, c) is not None, on_case=progress.update, on_finding=on_finding,
                confirm=None if args.no_confirm else on_fresh_pool,
            )
            starts, resets, events = pool.starts, pool.resets, list(pool.events)
    except PoolStartError as exc:
        print(f"shardfuzz run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nshardfuzz run: interrupted", file=sys.stderr)
        return 130
    progress.finish()

    new = result.findings  # the campaign never records a known signature as a finding
    report = {
        "torch": torch.__version__,
        "budget_seconds": args.budget,
        "wall_seconds": round(time.monotonic() - started, 3),
        "seconds_in_cases": round(result.seconds_in_cases, 3),
        "seed": args.seed,
        "world_size": args.world_size,
        "target": target,
        "cases_run": result.cases_run,
        "passed": result.passed,
        "pool_starts": starts,
        "pool_resets": resets,
        "pool_events": [{"kind": e.kind, "rank": e.rank, "how": e.how, "log_tail": e.log_tail[-2000:]}
                        for e in events],
        "failures": [
            {"signature": s, "status": f.verdict.status, "class": f.verdict.triage,
             "summary": f.verdict.summary(), "hits": f.hits,
             "flaky": f.flaky, "other_outcome": f.other.summary() if f.other else None, "corpus_file": new_files.get(s), "case": to_dict(f.case)}
            for s, f in new.items()
        ],
        "unsupported": [{"signature": s, "hits": n} for s, n in result.unsupported.items()],
        "known_failures": [
            {"signature": s, "title": known[s].title, "hits": n} for s, n in result.known_hits.items()
        ],
        "coverage": {dim: dict(sorted(values.items())) for dim, values in sorted(result.coverage.items())},
    }
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    _print_summary(report)
    return 1 if new and not args.exit_zero else 0


def _print_summary(report: dict) -> None:
    rate = report["cases_run"] / max(report["wall_seconds"], 1e-9)
    print(f"shardfuzz: {report['cases_run']} cases in {report['wall_seconds']:.1f}s ({rate:.1f}/s) "
          f"on torch {report['torch']}: {report['passed']} passed, "
          f"{len(report['failures'])} new failure(s), "
          f"{sum(k['hits'] for k in report['known_failures'])} hit(s) of {len(report['known_failures'])} known bug(s)")
    for failure in report["failures"]:
        print(f"  NEW   [{failure['class']}] {failure['summary'][:200]}")
        if failure["corpus_file"]:
            print(f"        reproducer: {failure['corpus_file']}")
    for known in report["known_failures"]:
        print(f"  known x{known['hits']}: {known['title'][:150]}")


class _Progress:
    """One status line: rewritten in place on a terminal, every 10 s as plain lines in logs."""

    def __init__(self, budget: float):
        self.budget = budget
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()
        self.counts = {"pass": 0, "fail": 0}

    def update(self, result, case, verdict) -> None:
        self.counts["pass" if verdict.ok else "fail"] += 1
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        elapsed = now - self.started
        line = (f"[{elapsed:6.1f}s / {self.budget:g}s] {result.cases_run} cases "
                f"({result.cases_run / max(elapsed, 1e-9):.1f}/s), {self.counts['fail']} failing runs, "
                f"{len(result.findings)} distinct new")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        sys.stderr.write(("\n" if self.tty else "") + text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
