"""``shardfuzz run | fleet | replay | export | shrink | report | report-bug | known-bugs | selftest | capabilities | targets | torch-env``: the command line.

It parses the options and dispatches: each command's body is ``shardfuzz.commands.<command>``.

Exit codes: every command exits 2 for bad options, an entry or report it cannot use (``replay``: none to
replay), a pool that cannot start, or (``torch-env``) a torch it cannot install. Otherwise ``run`` exits 0 when
no new failure was found, 1 when one was (each is saved to the corpus; 0 with ``--exit-zero``), 130/143 when
SIGINT/SIGTERM stopped it (after writing the corpus and reports); ``fleet`` as ``run``, and 2 where a campaign
ended otherwise (its actor died more often than it may restart, say); ``replay`` exits 0 when every entry behaved
as its ranges predict here (``replay.expectation``; always with ``--on-cuda``), 1 when one passes inside its
range, fails again past its fix, changed or is flaky; ``shrink`` exits 1 when the entry no longer fails as
recorded; ``selftest`` 1 when a mutant survived; the rest 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shardfuzz.case import DEVICES
from shardfuzz.commands import (
    capabilities,
    explain,
    export,
    fleet,
    known_bugs,
    replay,
    report,
    report_bug,
    run,
    selftest,
    shrink,
    targets,
    torch_env,
)
from shardfuzz.commands._arg_types import count as _count
from shardfuzz.commands._arg_types import duration as _duration
from shardfuzz.commands._arg_types import non_negative_float as _non_negative_float
from shardfuzz.commands._arg_types import positive_float as _positive_float
from shardfuzz.commands._arg_types import world_size as _world_size
from shardfuzz.fleet.options import add_fleet_options

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job, each with its options (``_<command>_options``)."""
    parser = argparse.ArgumentParser(prog="shardfuzz", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _run_options(commands.add_parser("run", help="fuzz save/load round-trips for a time budget"))
    fleet_parser = commands.add_parser("fleet", help="run's campaigns across a Ray cluster: one corpus, one report")
    _run_options(fleet_parser)
    add_fleet_options(fleet_parser)
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
    _explain_options(
        commands.add_parser(
            "explain",
            help="run an entry's neighbours: which of its values the failure needs, whether it bites realistic widths",
        )
    )
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
        "--explain-budget",
        type=_non_negative_float,
        default=120.0,
        help="seconds to explain each new finding in, and at most a tenth of the budget: its neighbours, one "
        "dimension changed at a time, say which of its values the failure needs and whether it fails at realistic "
        "widths (default 120; 0: do not explain; `shardfuzz explain ENTRY` does it later)",
    )
    run.add_argument(
        "--shrink-budget",
        type=_non_negative_float,
        default=None,
        help="seconds a round may spend shrinking its new failures (default: half the budget, at least 30 s; 0: keep "
        "each as first seen, so the run's cases go to drawing; `shardfuzz shrink ENTRY` shrinks it later)",
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
        "--no-pair-steer",
        action="store_true",
        help="run every draw (default: pass over draws that bring no pair of dimension values not run yet, "
        "but one in four; the report's pairwise block counts the pairs reached)",
    )
    run.add_argument(
        "--pairs",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the pairs of dimension values the run reached, one per line (one worker: with --workers, "
        "not written), to compare runs against bench/pairs_reference.py's sample",
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


def _explain_options(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("entries", type=Path, nargs="+", help="corpus entries (.json files)")
    explain.add_argument(
        "--budget", type=_duration, default=600.0, help="time per entry: seconds, or with s/m/h (default 600 s)"
    )
    explain.add_argument(
        "--case-timeout",
        type=_positive_float,
        default=None,
        help="seconds before a case counts as hung (default: from the case's size)",
    )
    explain.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="print the explanation only (default: keep it in the entry, and its necessary values in known.when)",
    )
    explain.add_argument(
        "--reach",
        action="store_true",
        help="of an entry explained in full, measure again only its realistic case and which edge brings the "
        "failure back (its neighbours are kept)",
    )
    explain.add_argument(
        "--extend",
        action="store_true",
        help="of an entry explained in full on this torch, run only the neighbours its explanation lacks (after "
        "shardfuzz learned new ones), then its reach again",
    )
    _across_options(explain)


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


# Each sub-command: the function that runs it (``shardfuzz.commands.<command>.main``).
COMMANDS = {
    "run": run.main,
    "fleet": fleet.main,
    "replay": replay.main,
    "export": export.main,
    "selftest": selftest.main,
    "shrink": shrink.main,
    "report-bug": report_bug.main,
    "known-bugs": known_bugs.main,
    "explain": explain.main,
    "report": report.main,
    "capabilities": capabilities.main,
    "targets": targets.main,
    "torch-env": torch_env.main,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run its command; its exit code."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
