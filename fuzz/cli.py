"""``shardfuzz run | replay | export | shrink | report | report-bug | known-bugs | selftest | capabilities |
targets``: the command line.

``run`` exits 0 when no new failure was found, 1 when one was (each is saved to
the corpus), 2 for bad options or a pool that cannot start, 130/143 when
SIGINT/SIGTERM stopped it (after writing the corpus and reports). ``replay`` exits 0
when every entry behaved as its ranges predict here (``replay.expectation``), 1 when one
passes inside its range, fails again past its fix, changed or is flaky. ``export`` writes a standalone torch-only reproducer.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from shardfuzz.case import DEVICES

__all__ = ["main"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d*)?)([smh])")


def _duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "8h" or "1h30m"."""
    cleaned = text.strip().lower()
    try:
        value = float(cleaned)
    except ValueError:
        parts = _DURATION.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration: give seconds, or a number with s, m or h (90, 15m, 8h, 1h30m)"
            ) from None
        value = sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _count(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _world_size(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} ranks: choose 1 to 64")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job, each with its options (``_<command>_options``)."""
    parser = argparse.ArgumentParser(prog="shardfuzz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _run_options(commands.add_parser("run", help="fuzz save/load round-trips for a time budget"))
    _replay_options(
        commands.add_parser("replay", help="re-run corpus entries: still failing, now passing, changed, flaky")
    )
    _export_options(commands.add_parser("export", help="write a corpus entry as a standalone torch-only script"))
    _selftest_options(
        commands.add_parser("selftest", help="fuzz a catalogue of injected checkpoint bugs; report kills")
    )
    _shrink_options(
        commands.add_parser(
            "shrink", help="go on shrinking a corpus entry; keep a smaller case that fails the same way"
        )
    )
    _report_bug_options(
        commands.add_parser("report-bug", help="write a corpus entry as an upstream issue text (markdown)")
    )
    _known_bugs_options(commands.add_parser("known-bugs", help="the corpus's known bugs as a markdown table"))
    _report_options(commands.add_parser("report", help="render a run's JSON report as HTML, markdown or JUnit XML"))
    commands.add_parser("capabilities", help="list what the installed torch offers to the fuzzer")
    _targets_options(
        commands.add_parser("targets", help="list the checkpoint targets: frameworks, versions, what each supports")
    )
    _torch_env_options(
        commands.add_parser(
            "torch-env", help="make (or find) an environment with another torch; print its Python for --save-python"
        )
    )
    return parser


def _across_options(parser: argparse.ArgumentParser) -> None:
    """``--save-python`` and ``--load-python``: one side's ranks in another Python (another torch)."""
    across = parser.add_argument_group("across torch versions (docs/cross-version.md)")
    across.add_argument(
        "--save-python",
        default=None,
        metavar="PATH",
        help="the Python whose ranks save (its torch; `shardfuzz torch-env VERSION` prints one); default: this one",
    )
    across.add_argument(
        "--load-python",
        default=None,
        metavar="PATH",
        help="the Python whose ranks load (its torch); default: this one",
    )


def _torch_env_options(env: argparse.ArgumentParser) -> None:
    env.add_argument("version", help="the torch release, e.g. 2.4.1")
    env.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for pip install (repeatable), e.g. --pip-arg=--index-url=URL",
    )


def _targets_options(targets: argparse.ArgumentParser) -> None:
    targets.add_argument("--json", action="store_true", help="one JSON object per target, a list")


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--budget",
        type=_duration,
        default=60.0,
        help="time to spend: seconds, or with s/m/h as in 90s, 15m, 8h, 1h30m (default 60 s)",
    )
    run.add_argument("--max-cases", type=_count, default=None, help="stop after this many cases (default: no limit)")
    run.add_argument("--seed", type=int, default=None, help="seed for the case draws (default: random)")
    run.add_argument(
        "--corpus", type=Path, default=Path("corpus"), help="directory of corpus entries (default ./corpus)"
    )
    run.add_argument("--world-size", type=_world_size, default=4, help="ranks in the pool; cases use 1..N (default 4)")
    run.add_argument("--target", default=None, help="checkpoint code under test, 'module:attribute' (default: DCP)")
    run.add_argument(
        "--model",
        default=None,
        help="your own model, 'package.module:factory': the factory returns an nn.Module with an "
        "example_batch(batch_size, generator) method, or (module, make_batch); every case shards, saves and "
        "loads it (default: drawn module trees)",
    )
    run.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: ranks also hold models on GPUs (one rank per GPU, NCCL) and cases cross "
        "CPU <-> GPU; needs a GPU (default cpu)",
    )
    run.add_argument(
        "--case-timeout",
        type=_positive_float,
        default=None,
        help="seconds before a case counts as hung (default: from the case's size, 30 s and up)",
    )
    run.add_argument(
        "--generic-deadlines",
        action="store_true",
        help="every case gets the generic deadline from its size (30 s and up), not one measured "
        "on this pool (4x the slowest of the last 200 cases, at least 10 s)",
    )
    run.add_argument(
        "--no-confirm", action="store_true", help="report failures without re-running them on a fresh pool first"
    )
    run.add_argument(
        "--no-steer",
        action="store_true",
        help="keep drawing cases like a known bug's hits after its first hit (default: steer away "
        "from them, so the budget goes to the unknown; the report counts what was masked)",
    )
    run.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 even when new failures are found (a smoke run: they are in the corpus and report)",
    )
    store = run.add_argument_group("example database (resume, share)")
    store.add_argument(
        "--database",
        default=None,
        metavar="PATH|redis://HOST:PORT/N|none",
        help="Hypothesis example database: a re-run replays what it holds first "
        "(default .shardfuzz/examples; redis:// to share one between machines)",
    )
    store.add_argument(
        "--replay-from",
        default=None,
        metavar="PATH|redis://...",
        help="also replay this database's examples, read-only (someone else's findings)",
    )
    out = run.add_argument_group("reports and progress")
    out.add_argument("--report", type=Path, default=None, help="write the JSON report here (rewritten while running)")
    out.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="at the end, write report.json, summary.md, junit.xml and report.html here",
    )
    out.add_argument(
        "--flush-every",
        type=_positive_float,
        default=30.0,
        help="seconds between rewrites of --report while running (default 30)",
    )
    out.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    scale = run.add_argument_group("scale-out")
    scale.add_argument(
        "--workers",
        type=_count,
        default=1,
        help="independent campaigns at once, each with its own pool, sharing corpus and database",
    )
    scale.add_argument(
        "--checkpoint-dir",
        default=None,
        help="under torchrun: where ranks write checkpoints (a filesystem every node sees)",
    )
    scale.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    _across_options(run)


def _replay_options(replay: argparse.ArgumentParser) -> None:
    replay.add_argument(
        "paths",
        nargs="*",
        type=Path,
        default=[Path("corpus")],
        help="entry files or corpus directories (default ./corpus)",
    )
    replay.add_argument(
        "--repeat", type=_world_size, default=1, help="runs per entry; verdicts that disagree mark it flaky (default 1)"
    )
    replay.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    replay.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: entries with a side on cuda run on the GPUs (else they answer unsupported)",
    )
    replay.add_argument(
        "--on-cuda",
        action="store_true",
        help="with --device cuda: run each entry with its sides moved to the GPUs (each side that has a GPU per "
        "rank), then as recorded on CPU ranks of the same pool, and say whether the bug is CUDA's too",
    )
    replay.add_argument(
        "--record",
        action="store_true",
        help="with --on-cuda: write what the GPU did into each entry (its `cuda` block; the known-bugs table shows it)",
    )
    replay.add_argument(
        "--max-world-size",
        type=_world_size,
        default=None,
        help="skip (saying so) entries that need more ranks than this (default: start what each needs)",
    )
    replay.add_argument(
        "--case-timeout",
        type=_positive_float,
        default=None,
        help="seconds before a case counts as hung (default: from the case's size)",
    )
    _across_options(replay)


def _export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument("entry", type=Path, help="the corpus entry (a .json file)")
    export.add_argument("-o", "--output", type=Path, default=None, help="script path (default: stdout)")


def _selftest_options(selftest: argparse.ArgumentParser) -> None:
    selftest.add_argument(
        "--budget", type=_positive_float, default=40.0, help="seconds per mutant to find it (default 40)"
    )
    selftest.add_argument(
        "--shrink-budget",
        type=_positive_float,
        default=40.0,
        help="seconds more per mutant to shrink what it found (default 40)",
    )
    selftest.add_argument("--world-size", type=_world_size, default=2, help="ranks in each pool (default 2)")
    selftest.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: sides are drawn on CPU and GPU ranks (one rank per GPU), as `run --device cuda` draws them",
    )
    selftest.add_argument("--seed", type=int, default=0, help="seed for the case draws (default 0)")
    selftest.add_argument(
        "--mutant", action="append", default=None, help="only this mutant (repeatable; default: the whole catalogue)"
    )
    selftest.add_argument(
        "--target",
        default=None,
        help="an object-level target (a framework's: accelerate, lightning, torchtitan, or module:attribute) "
        "to inject faults into instead of DCP",
    )
    selftest.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    selftest.add_argument(
        "--corpus",
        type=Path,
        default=Path("corpus"),
        help="known torch bugs here are not counted as kills (default ./corpus)",
    )


def _shrink_options(shrink: argparse.ArgumentParser) -> None:
    shrink.add_argument("entry", type=Path, help="the corpus entry (a .json file); rewritten in place")
    shrink.add_argument(
        "--budget", type=_duration, default=300.0, help="time to spend: seconds, or with s/m/h (default 300 s)"
    )
    shrink.add_argument(
        "--case-timeout",
        type=_positive_float,
        default=None,
        help="seconds before a case counts as hung (default: from the case's size)",
    )
    _across_options(shrink)


def _report_bug_options(report_bug: argparse.ArgumentParser) -> None:
    report_bug.add_argument("entry", type=Path, help="the corpus entry (a .json file)")
    report_bug.add_argument("-o", "--output", type=Path, default=None, help="markdown file (default: stdout)")


def _known_bugs_options(table: argparse.ArgumentParser) -> None:
    table.add_argument("--corpus", type=Path, default=Path("corpus"), help="corpus directory (default ./corpus)")
    table.add_argument(
        "-o", "--output", type=Path, default=None, help="write it here, e.g. corpus/README.md (default: stdout)"
    )


def _report_options(render: argparse.ArgumentParser) -> None:
    render.add_argument("report", type=Path, help="a report.json written by shardfuzz run (--report/--report-dir)")
    kind = render.add_mutually_exclusive_group()
    for flag in ("html", "markdown", "junit"):
        kind.add_argument(
            f"--{flag}",
            dest="format",
            action="store_const",
            const=flag,
            help=f"{flag} (default: html)" if flag == "html" else flag,
        )
    render.add_argument("-o", "--output", type=Path, default=None, help="write it here (default: stdout)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "capabilities":
        return _capabilities()
    if args.command == "targets":
        return _targets(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "export":
        return _export(args)
    if args.command == "selftest":
        return _selftest(args)
    if args.command == "shrink":
        return _shrink(args)
    if args.command == "report":
        return _render_report(args)
    if args.command == "report-bug":
        return _report_bug(args)
    if args.command == "known-bugs":
        return _known_bugs(args)
    if args.command == "torch-env":
        return _torch_env(args)
    return _run(args)


def _torch_env(args) -> int:
    """Print the Python of an environment with torch ``args.version`` (made if missing); progress on stderr."""
    from shardfuzz.executor.torch_envs import TorchEnvError, make_env

    try:
        python, found = make_env(args.version, pip_args=args.pip_arg, log=lambda line: print(line, file=sys.stderr))
    except TorchEnvError as exc:
        print(f"shardfuzz torch-env: {exc}", file=sys.stderr)
        return 2
    print(f"shardfuzz torch-env: {found.describe()}", file=sys.stderr)
    for feature, why in sorted(found.capabilities.off.items()):
        print(f"  off  {feature}  ({why})", file=sys.stderr)
    print(python)
    return 0


def _selftest(args) -> int:
    import torch

    from shardfuzz.executor import PoolStartError
    from shardfuzz.findings.corpus import known_bugs, load_corpus
    from shardfuzz.search.runner import campaign_devices
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


def _entries_at(paths: list[Path]):
    """Entries from files and directories; unreadable files and missing paths as problems."""
    from shardfuzz.findings.corpus import CorpusError, load_corpus, load_entry

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


def _interpreters(args):
    """(save, load) ``Interpreter``s of ``--save-python``/``--load-python``, or None when neither is given."""
    from shardfuzz.executor.interpreters import probe

    if args.save_python is None and args.load_python is None:
        return None
    return tuple(probe(python or sys.executable) for python in (args.save_python, args.load_python))


def _executor(interpreters, world_size: int, **options):
    """A ``RankPool`` (one torch: this one, or ``--save-python`` and ``--load-python`` alike) or a
    ``CrossVersionPool`` (two), with ``RankPool``'s ``options``."""
    from shardfuzz.executor import RankPool
    from shardfuzz.executor.cross import CrossVersionPool

    if interpreters is None or interpreters[0] == interpreters[1]:
        return RankPool(world_size, interpreter=interpreters[0] if interpreters else None, **options)
    return CrossVersionPool(world_size, save=interpreters[0], load=interpreters[1], **options)


def _replay(args) -> int:
    import attrs

    from shardfuzz.executor import PoolStartError, RankPool
    from shardfuzz.executor.cross import CrossVersionPool
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.corpus import rewrite_entry
    from shardfuzz.findings.replay import replay_entries
    from shardfuzz.search.runner import campaign_devices

    _, why_not = campaign_devices(args.device)
    if not why_not and args.on_cuda and args.device != "cuda":
        why_not = "--on-cuda moves sides to the GPUs: give --device cuda too"
    if not why_not and args.record and not args.on_cuda:
        why_not = "--record writes what the GPU did into each entry: give --on-cuda (and --device cuda) too"
    if not why_not and args.on_cuda and (args.save_python or args.load_python):
        why_not = "--on-cuda runs one torch: leave out --save-python and --load-python"
    if why_not:
        print(f"shardfuzz replay: {why_not}", file=sys.stderr)
        return 2
    entries, problems = _entries_at(args.paths)
    for problem in problems:
        print(f"shardfuzz replay: skipping {problem}", file=sys.stderr)
    if not entries:
        print("shardfuzz replay: no corpus entries to replay", file=sys.stderr)
        return 2
    # One pool per target, of the largest world its entries need; an entry that must fill its
    # process group exactly (a broadcasting load, a framework's target) gets a pool of its own size where that differs.
    sizes: dict[str, int] = {}
    exact: dict[str, set[int]] = {}
    for _, entry in entries:
        if args.max_world_size is not None and entry.replay_world_size > args.max_world_size:
            continue  # skipped, saying so: no pool grows to its size
        sizes[entry.target] = max(sizes.get(entry.target, 1), entry.replay_world_size)
        if entry.fills_its_world:
            exact.setdefault(entry.target, set()).add(entry.replay_world_size)
    try:
        interpreters = _interpreters(args)
    except InterpreterError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    pools: dict[tuple[str, int], RankPool | CrossVersionPool] = {}

    def pool_for(target: str, world_size: int) -> RankPool | CrossVersionPool:
        size = world_size if world_size in exact.get(target, ()) else sizes[target]
        if (target, size) not in pools:
            pools[target, size] = _executor(
                interpreters, size, target=target, case_timeout=args.case_timeout, device=args.device
            )
        return pools[target, size]

    def show(replay) -> None:
        if replay.cuda is not None:
            print(f"cuda {replay.cuda.outcome:15} {replay.path.name}  {replay.cuda.verdict[:150]}")
            if args.record:
                rewrite_entry(replay.path, attrs.evolve(replay.entry, cuda=replay.cuda))
            return
        mark = "skip" if replay.outcome == "skipped" else ("NOTE" if replay.unexpected else "ok  ")
        print(f"{mark} {replay.outcome:13} {replay.path.name}  {replay.entry.title[:110]}")
        if replay.skipped:
            print(f"       {replay.skipped}")
        elif replay.outcome != "still failing":
            for verdict in replay.verdicts[:3]:
                print(f"       now: {verdict.summary()[:160]}")
        if replay.note and not replay.skipped:
            print(f"       {replay.note}")

    try:
        replays = replay_entries(
            entries,
            pool_for,
            repeat=args.repeat,
            on_replay=show,
            max_world_size=args.max_world_size,
            on_cuda=_gpu_count() if args.on_cuda else 0,
        )
    except PoolStartError as exc:
        print(f"shardfuzz replay: {exc}", file=sys.stderr)
        return 2
    finally:
        for pool in pools.values():
            pool.close()
    if args.report:
        args.report.write_text(
            json.dumps(
                {"repeat": args.repeat, "problems": problems, "entries": [r.as_dict() for r in replays]}, indent=2
            )
            + "\n"
        )
    if args.on_cuda:
        return 0  # a bug that passes on CUDA is a finding about the bug, not a failed replay
    return 1 if any(r.unexpected for r in replays) else 0


def _gpu_count() -> int:
    from shardfuzz.capabilities import capabilities

    return capabilities().cuda_devices


def _entry(command: str, path: Path):
    """The corpus entry at ``path``, or None after saying what is wrong with the file."""
    from shardfuzz.findings.corpus import CorpusError, load_entry

    try:
        return load_entry(path)
    except CorpusError as exc:
        print(f"shardfuzz {command}: {exc}", file=sys.stderr)
        return None


def _emit(text: str, output: Path | None) -> None:
    """``text`` to ``output``, or to stdout when there is none."""
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def _export(args) -> int:
    from shardfuzz.findings.export import export_script

    entry = _entry("export", args.entry)
    if entry is None:
        return 2
    try:
        script = export_script(entry, filename=args.output.name if args.output else "repro.py")
    except ValueError as exc:
        print(f"shardfuzz export: {args.entry}: {exc}", file=sys.stderr)
        return 2
    _emit(script, args.output)
    if args.output is not None:
        print(
            f"wrote {args.output}: run it with `python {args.output}` or "
            f"`torchrun --nproc-per-node {entry.case.world_size} {args.output}`",
            file=sys.stderr,
        )
    return 0


def _shrink(args) -> int:
    import attrs

    from shardfuzz.executor import PoolStartError
    from shardfuzz.executor.interpreters import InterpreterError
    from shardfuzz.findings.corpus import rewrite_entry
    from shardfuzz.findings.describe import describe
    from shardfuzz.search.shrink import case_size, shrink_case

    entry = _entry("shrink", args.entry)
    if entry is None:
        return 2
    try:
        interpreters = _interpreters(args)
    except InterpreterError as exc:
        print(f"shardfuzz shrink: {exc}", file=sys.stderr)
        return 2
    if entry.torches is not None and interpreters is None:
        print(
            "shardfuzz shrink: {} was saved under torch {} and loaded under torch {}: give --save-python and "
            "--load-python".format(args.entry, *entry.torches),
            file=sys.stderr,
        )
        return 2

    def still_fails(case) -> bool:
        verdict = pool.run(case)
        return verdict.is_failure and verdict.signature() == entry.signature

    def admissible(case) -> bool:  # a known bug's case must keep meeting its conditions
        return not pool.cannot_run(case) and (entry.known is None or entry.known.matches(case))

    print(
        f"shrinking {args.entry} (size {case_size(entry.case)}: {describe(entry.case)}) for up to {args.budget:g} s",
        file=sys.stderr,
    )
    try:
        with _executor(
            interpreters, entry.replay_world_size, target=entry.target, case_timeout=args.case_timeout
        ) as pool:
            started = time.monotonic()
            if not still_fails(entry.case):
                print(
                    f"shardfuzz shrink: {args.entry} does not fail as recorded here ({entry.signature[:120]}); "
                    "`shardfuzz replay` says how it behaves now",
                    file=sys.stderr,
                )
                return 1
            if args.case_timeout is None and entry.status != "hang":
                # A simpler case that hangs (another bug) costs seconds, not the generic deadline; a
                # hang entry keeps the generic one, lest a slow candidate pass for the same hang.
                pool.case_timeout = max(10.0, 5 * (time.monotonic() - started))
            result = shrink_case(entry.case, still_fails, budget=args.budget, admissible=admissible)
    except PoolStartError as exc:
        print(f"shardfuzz shrink: {exc}", file=sys.stderr)
        return 2
    if result.moves:
        rewrite_entry(args.entry, attrs.evolve(entry, case=result.case, shrunk=result.finished))
    elif result.finished and not entry.shrunk:
        rewrite_entry(args.entry, attrs.evolve(entry, shrunk=True))
    state = (
        "finished (nothing one step simpler fails the same way)"
        if result.finished
        else "stopped by the budget: run it again to go on"
    )
    print(
        f"shardfuzz shrink: size {case_size(entry.case)} -> {case_size(result.case)} in {result.moves} moves, "
        f"{result.tried} cases tried, {result.seconds:.0f} s; {state}\n  {describe(result.case)}"
    )
    return 0


def _render_report(args) -> int:
    from shardfuzz.findings.render import html_page, junit_xml, markdown
    from shardfuzz.findings.run_report import read_report

    render = {"html": html_page, "markdown": markdown, "junit": junit_xml}[args.format or "html"]
    try:
        text = render(read_report(args.report))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = f"{args.report}: not a complete run report (missing {exc})" if isinstance(exc, KeyError) else str(exc)
        print(f"shardfuzz report: {what}", file=sys.stderr)
        return 2
    _emit(text, args.output)
    return 0


def _report_bug(args) -> int:
    from shardfuzz.findings.export import export_script
    from shardfuzz.findings.upstream import issue_text

    entry = _entry("report-bug", args.entry)
    if entry is None:
        return 2
    try:
        text = issue_text(entry, script=export_script(entry))
    except ValueError as exc:
        print(f"shardfuzz report-bug: {args.entry}: {exc}", file=sys.stderr)
        return 2
    _emit(text, args.output)
    if args.output is not None:
        print(
            f"wrote {args.output}: check it reproduces on your machine (`shardfuzz export`), then file it",
            file=sys.stderr,
        )
    return 0


def _known_bugs(args) -> int:
    from shardfuzz.findings.corpus import load_corpus
    from shardfuzz.findings.upstream import known_bug_table

    entries, problems = load_corpus(args.corpus)
    for problem in problems:
        print(f"shardfuzz known-bugs: skipping {problem}", file=sys.stderr)
    _emit(known_bug_table(entries), args.output)
    return 0


def _capabilities() -> int:
    from shardfuzz.capabilities import capabilities

    caps = capabilities()
    print(f"torch {caps.torch_version}")
    for feature, state, why in caps.table():
        print(f"  {state:3}  {feature}{'  (' + why + ')' if why else ''}")
    return 0


def _targets(args) -> int:
    import torch

    from shardfuzz.targets.listing import target_infos

    infos = target_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    print(f"targets on torch {torch.__version__} (--target NAME):")
    for info in infos:
        if not info.available:
            version = f" ({info.framework} {info.version} installed)" if info.version else ""
            print(f"  {info.name:12} unavailable{version}: {info.error}")
            continue
        framework = f"{info.framework} {info.version}" if info.framework else f"torch {info.version}"
        print(f"  {info.name:12} {framework}: {info.kind}-level, {info.spec}")
        print(f"  {'':12} engines {', '.join(info.engines)}")
        for what, why in info.excludes.items():
            print(f"  {'':12} - {what}: {why}")
    return 0


def _run(args) -> int:
    import attrs

    from shardfuzz.search.run_config import RunConfig

    config = RunConfig.from_args(args)
    if config.database is None:
        from shardfuzz.search.database import DEFAULT_DATABASE

        config = attrs.evolve(config, database=DEFAULT_DATABASE)
    if config.workers == 1:
        from shardfuzz.search.runner import run_command

        return run_command(config)
    from shardfuzz.search.workers import run_workers

    return run_workers(config)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
