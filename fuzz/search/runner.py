"""``shardfuzz run`` for one campaign: set up, fuzz, keep the corpus and the reports, say how it went.

The executor is a warm ``RankPool`` of child processes, or, under torchrun, the
torchrun ranks themselves (rank 0 runs this; the others follow). SIGINT and
SIGTERM stop the run gracefully (``shardfuzz.executor.stop``). The JSON report is
rewritten every ``--flush-every`` seconds, so even a run killed with SIGKILL
leaves a report; the corpus gets each new failure the moment it is shrunk.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardfuzz.case import Case, dimensions, dumps
from shardfuzz.executor.stop import EXIT_CODES, StopFlag, StopRequested
from shardfuzz.findings.campaign_result import CampaignResult, Finding
from shardfuzz.findings.report_output import print_summary, write_reports
from shardfuzz.search.expectations import expectations
from shardfuzz.search.run_config import RunConfig
from shardfuzz.search.run_setup import campaign_devices, user_model
from shardfuzz.search.sink import RunSink
from shardfuzz.search.steering import Expectation
from shardfuzz.verdict import Verdict

if TYPE_CHECKING:  # the campaign's modules import Hypothesis, which a torchrun follower never imports
    from shardfuzz.search.campaign_settings import CampaignSettings

__all__ = ["run_command", "ABANDON_GRACE"]

#: The most of a run's budget one finding's explanation may take (``--explain-budget`` caps it in seconds too).
EXPLAIN_SHARE = 0.1

#: Seconds the case in flight may go on after a stop was asked before it is abandoned.
ABANDON_GRACE = 3.0
#: Hits of one known bug after which a run stops drawing cases like its hits (``--no-steer``: never).
#: One: a mask learned from a single hit may be too wide, but its probes narrow it (``shardfuzz.search.steering``).
STEER_AFTER = 1


def run_command(config: RunConfig, *, database: Any = "open", sink: RunSink | None = None) -> int:
    """One campaign as ``config`` says, on a warm pool or (under torchrun) on torchrun's ranks; the exit code.

    ``database``: an example database to use instead of opening ``config.database`` (a fleet's campaign, whose
    database the fleet's driver holds); ``sink``: where findings and report snapshots go too (``RunSink``)."""
    import os

    from shardfuzz.executor.torchrun import follow, in_torchrun
    from shardfuzz.targets import DEFAULT_TARGET, resolve_target

    budget_end = time.monotonic() + config.budget  # the pool's start and the reports count against it too
    target = config.target or DEFAULT_TARGET
    torchrun = in_torchrun()
    if torchrun and config.device != "cpu":
        print(
            "shardfuzz run: --device cuda is not supported under torchrun yet (its ranks run on CPU with gloo); "
            "run without torchrun on a machine with GPUs",
            file=sys.stderr,
        )
        return 2
    if torchrun and int(os.environ["RANK"]) != 0:
        # A follower runs its share of what rank 0 sends: it never draws, so it never imports Hypothesis or
        # opens the example database (rank 0 alone reports a bad option; torchrun then ends the job).
        return follow(target=target, checkpoint_dir=config.checkpoint_dir)

    from shardfuzz.search.database import DatabaseError, open_database

    try:
        resolve_target(target)  # fail here, with the spec named, rather than in every rank
        user_model(config.model)  # likewise the user's model factory
        if database == "open":
            database = open_database(config.database, replay_from=config.replay_from)
    except (ValueError, DatabaseError) as exc:
        print(f"shardfuzz run: {exc}", file=sys.stderr)
        return 2
    devices, why_not = campaign_devices(config.device)
    if why_not:
        print(f"shardfuzz run: {why_not}", file=sys.stderr)
        return 2
    world_size = int(os.environ["WORLD_SIZE"]) if torchrun else config.world_size
    if not config.across_pythons:
        run = _Run(
            config,
            target=target,
            torchrun=torchrun,
            world_size=world_size,
            devices=devices,
            database=database,
            sink=sink,
        )
        return run.fuzz(budget_end)
    from shardfuzz.capabilities import common, in_force
    from shardfuzz.executor.interpreters import InterpreterError, probe

    if torchrun:
        print("shardfuzz run: --save-python/--load-python start their own ranks; run without torchrun", file=sys.stderr)
        return 2
    try:
        save, load = (probe(python or sys.executable) for python in (config.save_python, config.load_python))
    except InterpreterError as exc:
        print(f"shardfuzz run: {exc}", file=sys.stderr)
        return 2
    with in_force(common(save.capabilities, load.capabilities)):  # draw only what both torches offer
        run = _Run(
            config,
            target=target,
            torchrun=False,
            world_size=world_size,
            devices=devices,
            database=database,
            interpreters=(save, load),
        )
        return run.fuzz(budget_end)


class _Run:
    """One ``shardfuzz run`` campaign under way: its corpus and known bugs, its executor, its reports.

    It is the campaign's host (``shardfuzz.search.host.CampaignHost``): its executor runs the cases, its corpus
    knows the known bugs, its stop flag answers ``should_stop``, and it saves and reports what is found."""

    def __init__(
        self,
        config: RunConfig,
        *,
        target: str,
        torchrun: bool,
        world_size: int,
        devices,
        database,
        interpreters=None,
        sink: RunSink | None = None,
    ):
        import torch

        from shardfuzz.capabilities import capabilities
        from shardfuzz.findings.corpus import known_bugs, load_corpus
        from shardfuzz.search.progress import Progress
        from shardfuzz.strategies import offered_values
        from shardfuzz.targets import framework_version, support_for

        self.config, self.target, self.torchrun, self.world_size = config, target, torchrun, world_size
        self.devices, self.database, self.sink = devices, database, sink
        entries, problems = load_corpus(config.corpus)
        for problem in problems:
            print(f"shardfuzz: skipping corpus file: {problem}", file=sys.stderr)
        self.interpreters = interpreters  # (save, load) Interpreters of a run across two Pythons, or None
        self.torches: tuple[str, str] | None = None
        if interpreters is not None:
            self.torches = (str(interpreters[0].torch_version), str(interpreters[1].torch_version))
        save_torch, load_torch = self.torches or (None, str(torch.__version__))
        self.known = known_bugs(entries, load_torch, save_torch=save_torch)
        # A random seed is chosen here, not inside Hypothesis, so the report can say which one to repeat the run with.
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        self.meta = {
            "torch": torch.__version__,
            "budget_seconds": config.budget,
            "seed": self.seed,
            "world_size": world_size,
            "target": target,
            "launcher": "torchrun" if torchrun else "pool",
            "database": config.database if database is not None else None,
            "worker": config.worker_index,
            "device": config.device,
            "model": config.model or "drawn",  # --model: the user's factory
        }
        if interpreters is not None:
            self.meta["across_torches"] = {
                "save_torch": str(interpreters[0].torch_version),
                "load_torch": str(interpreters[1].torch_version),
                "save": interpreters[0].describe(),
                "load": interpreters[1].describe(),
                "left_out": {k: v for k, v in capabilities().off.items() if v.startswith("left out")},
                "continuation": "compared within its tolerance where the torches differ (their kernels may round "
                "differently); the loaded state itself is compared bit for bit",
            }
        support = support_for(target)
        self.offered = {
            dim: sorted(values)
            for dim, values in offered_values(max_world_size=world_size, devices=devices, support=support).items()
        }
        self.meta["target_framework"] = framework_version(target)
        self.corpus_files: dict[str, str] = {}
        self.explanations: dict[str, str] = {}  # a finding's explanation in a line, by signature
        self.stop = StopFlag()
        self.progress = Progress(config.budget, plain=True if config.plain else None)  # None: unless on a terminal
        self.executor: Any = None  # a RankPool or a TorchrunWorld, once opened
        self.last_flush = time.monotonic()
        self.budget_end = 0.0

    # --- what the campaign asks (CampaignHost, in the order it asks) ---------

    def should_stop(self) -> str | None:
        self._hear_sink()
        return self.stop.reason

    def _hear_sink(self) -> None:
        """A stop the sink asks for (a fleet's driver) lands in the stop flag, as a signal's would."""
        reason = self.sink.stop_reason() if self.sink is not None else None
        if reason is not None:
            self.stop.request(reason)

    def run_case(self, case: Case) -> Verdict:
        return self.executor.run(case)

    def is_known(self, signature: str, case: Case) -> bool:
        return self.known.lookup(signature, case) is not None

    def known_dimensions(self, signature: str, case: Case) -> dict[str, str] | None:
        """The dimensions of a known bug's own shrunk case (steering keeps only what its hits share with it)."""
        entry = self.known.lookup(signature, case)
        return dimensions(entry.case) if entry is not None else None

    def on_case(self, result: CampaignResult, case: Case, verdict: Verdict) -> None:
        config = self.config
        flush = (config.report is not None or self.sink is not None) and (
            time.monotonic() - self.last_flush >= config.flush_every
        )
        if not (flush or self.progress.due()):
            return
        report = self.snapshot(result)
        if flush:
            self.last_flush = time.monotonic()
            write_reports(report, json_path=config.report)
            if self.sink is not None:
                self.sink.flushed(report)
        if self.progress.due():
            self.progress.show(report)

    def confirm(self, case: Case) -> Verdict | None:
        """The case again on new ranks; None with ``--no-confirm``, or under torchrun, where there is no fresh pool
        to confirm on (the same ranks would answer again)."""
        if self.config.no_confirm or self.torchrun:
            return None
        self.executor.close()  # the next run starts new ranks: no state carried over from earlier cases
        # A hang seen on a measured deadline must outlast the generic one too before it is a finding.
        return self.executor.run(case, generic_deadline=True)

    def on_finding(self, finding: Finding) -> None:
        """Save the finding at once (nothing later may lose it), then explain it inside the budget and keep the
        explanation in its entry; what did not finish is said, with the command that finishes it."""
        from shardfuzz.findings.corpus import entry_for, load_entry, save_entry
        from shardfuzz.targets import framework_of, support_for

        alone = self._alone(finding.case) if self.torches is not None else None
        # A flaky finding (its re-run on a fresh pool did otherwise) is not explained: its neighbours would
        # measure chance, and every one that happened to pass would read as a condition.
        explaining = self.config.explain_budget > 0 and not finding.flaky
        entry = entry_for(
            finding.case,
            finding.verdict,
            target=self.target,
            other=finding.other,
            world_size=self.world_size,
            shrunk=finding.shrunk,
            torches=self.torches,
            alone=alone,
            frameworks=framework_of(self.target),
            whole_pool=support_for(self.target).whole_pool,
            unfinished=finding.unfinished + (("explanation",) if explaining else ()),
        )
        if self.sink is not None:  # first: nothing that happens to this campaign from here on may lose it
            self.sink.found(entry)
        try:
            path = save_entry(self.config.corpus, entry)
        except OSError as exc:  # the report still lists it; say where its case is, whole
            self.progress.message(
                f"NEW [{finding.verdict.triage}] {finding.verdict.summary()[:150]}\n     NOT SAVED to "
                f"{self.config.corpus}: {exc}\n     its case: {dumps(finding.case)}"
            )
            return
        self.corpus_files[finding.signature] = str(path)
        saved = load_entry(path)  # the entry as it stands: this finding's, or one it merged into
        if explaining:
            saved = self._explain(path, saved)
        self.progress.message(
            f"NEW [{finding.verdict.triage}] {finding.verdict.summary()[:150]}\n     saved {path}"
            + self._what_is_left(path, saved, finding)
            + self._own_bug_of(entry, alone or {})
            + (
                "\n     not run under each torch alone: the run was stopping (`shardfuzz replay` with both Pythons can)"
                if self.torches is not None and alone is None
                else ""
            )
        )

    def _explain(self, path: Path, saved):
        """Run the neighbours of ``saved``, the entry at ``path`` (if it is new: a finding may have merged into an
        entry already there), until the explain budget or the run's ends; the entry, keeping what they measured."""
        from shardfuzz.findings.corpus import rewrite_entry
        from shardfuzz.search.explain import explain_case, with_explanation

        if saved.known is not None or saved.explanation is not None or self.stop.reason:
            return saved
        if time.monotonic() >= self.budget_end:  # the run is stopping: the entry says its explanation is unfinished
            return saved
        # A short run keeps most of its budget for the search: one finding's explanation takes at most a tenth of it.
        seconds = min(self.config.explain_budget, EXPLAIN_SHARE * self.config.budget)
        deadline = min(self.budget_end, time.monotonic() + seconds)
        explanation = explain_case(
            saved.case,
            saved.signature,
            self.executor.run,
            cannot_run=self.executor.cannot_run,
            deadline=deadline,
            torch_version=str(self.meta.get("torch", "")),
        )
        explained = with_explanation(saved, explanation)
        rewrite_entry(path, explained)
        if self.sink is not None:
            self.sink.explained(explained)
        self.explanations[saved.signature] = explanation.summary()
        return explained

    def _what_is_left(self, path: Path, saved, finding: Finding) -> str:
        """What did not finish for ``finding``, saved as ``saved`` at ``path``, each with the command that finishes it."""
        from shardfuzz.findings.campaign_result import UNFINISHED

        lines = []
        if not finding.shrunk:
            lines.append(
                f"not fully shrunk: its shrink was cut short after {finding.shrink_cases} cases "
                f"({finding.shrink_seconds:.0f} s); `{UNFINISHED['shrink'].format(path=path)}` goes on from here"
            )
        for phase in saved.unfinished:
            lines.append(f"its {phase} was cut short; `{UNFINISHED[phase].format(path=path)}` finishes it")
        if saved.explanation is not None and saved.explanation.complete:
            lines.append(saved.explanation.summary())
        return "".join(f"\n     {line}" for line in lines)

    # --- behind those answers ------------------------------------------------

    def snapshot(self, result, final: bool = False) -> dict:
        from shardfuzz.findings.run_report import campaign_report

        return campaign_report(
            result,
            meta=self.meta,
            known=self.known,
            corpus_files=self.corpus_files,
            explanations=self.explanations,
            offered=self.offered,
            pool_events=self.executor.events if self.executor is not None else (),
            final=final,
        )

    def _alone(self, case):
        """The case under each torch alone (``CrossVersionPool.alone``), or None when the run is stopping
        (the budget's end, a signal) or ranks cannot start: the finding is saved all the same."""
        from shardfuzz.executor import PoolStartError

        try:
            return self.executor.alone(case)
        except (StopRequested, PoolStartError):
            return None

    def _own_bug_of(self, entry, alone) -> str:
        """A finding across two torches that fails the same way under one of them alone is that torch's own
        bug: known for the rest of this run (steered away from), so the budget goes to bugs of the crossing.
        What to tell the user ('' for a bug of the crossing, or a run on one torch)."""
        import attrs

        from shardfuzz.findings.known import Known

        own = [version for version, v in alone.items() if v.is_failure and v.signature() == entry.signature]
        if not own:
            return ""
        known = Known(f"torch {own[0]}'s own bug: the case fails the same way under it alone", torch=f"=={own[0]}")
        self.known.setdefault(entry.signature, []).append(attrs.evolve(entry, known=known))
        return f"\n     fails the same way under torch {' and '.join(own)} alone: steered away from for the rest of this run"

    def abandon(self) -> bool:
        """Give up the case in flight a few seconds after a stop was asked, or after the budget's end
        (a hang or a slow crash must not stretch the run: the budget is a promise)."""
        self._hear_sink()
        return self.stop.overdue(ABANDON_GRACE) or time.monotonic() > self.budget_end + ABANDON_GRACE

    # --- the run ------------------------------------------------------------

    def open_executor(self):
        from shardfuzz.executor import pool_for
        from shardfuzz.executor.torchrun import TorchrunWorld

        config = self.config
        if self.interpreters is not None:
            from shardfuzz.executor.cross import CrossVersionPool

            return CrossVersionPool(
                self.world_size,
                save=self.interpreters[0],
                load=self.interpreters[1],
                target=self.target,
                case_timeout=config.case_timeout,
                abandon=self.abandon,
                device=config.device,
                measured_deadlines=not config.generic_deadlines,
            )
        if self.torchrun:
            return TorchrunWorld(
                target=self.target,
                case_timeout=config.case_timeout,
                checkpoint_dir=config.checkpoint_dir,
                abandon=self.abandon,
            )
        return pool_for(
            self.world_size,
            target=self.target,
            case_timeout=config.case_timeout,
            abandon=self.abandon,
            device=config.device,
            measured_deadlines=not config.generic_deadlines,
        )

    def expected(self) -> dict[str, Expectation]:
        """Known bugs masked from the first draw (``expectations.expectations``)."""
        return expectations(self.known)

    def campaign_settings(self) -> CampaignSettings:
        """The campaign's settings: what is left of the budget, the run's seed and pool, its database's key."""
        from shardfuzz.search.campaign import CampaignSettings, database_key
        from shardfuzz.targets import support_for

        config = self.config
        device_key: tuple[str, ...] = () if config.device == "cpu" else (f"device={config.device}",)  # as before GPUs
        if config.model is not None:  # a user's model's examples are not the drawn trees'
            device_key += (f"model={config.model}",)
        if self.torches is not None:  # examples of one pair of torches are not another's
            device_key += ("torches={}->{}".format(*self.torches),)
        return CampaignSettings(
            budget=max(0.0, self.budget_end - time.monotonic()),
            seed=self.seed,
            max_world_size=self.world_size,
            database=self.database,
            database_key=database_key(f"world={self.world_size}", self.target, *device_key),
            max_cases=config.max_cases,
            devices=self.devices,
            support=support_for(self.target),  # what the target runs; storage variants only where it takes them
            steer_after=None if config.no_steer else STEER_AFTER,
            shrink_budget=config.shrink_budget,
            pairwise=not config.no_pair_steer,
            expected=self.expected(),
            model=user_model(config.model),
        )

    def fuzz(self, budget_end: float) -> int:
        """Fuzz until ``budget_end`` (monotonic seconds), a stop or ``max_cases``; write the reports; the exit code."""
        from shardfuzz.executor import PoolStartError
        from shardfuzz.search.campaign import run_campaign

        config, progress, stop = self.config, self.progress, self.stop
        self.budget_end = budget_end
        try:
            with stop:
                self.executor = executor = self.open_executor()
                with executor:
                    result = run_campaign(self, self.campaign_settings())
        except PoolStartError as exc:
            progress.finish()
            print(f"shardfuzz run: {exc}", file=sys.stderr)
            return 2
        except StopRequested:  # stopped while the ranks were still starting: nothing ran, nothing to report
            progress.finish()
            print(f"shardfuzz run: stopped by {stop.reason} before the first case", file=sys.stderr)
            return EXIT_CODES.get(stop.reason or "", 130)
        except KeyboardInterrupt:
            progress.finish()
            print(
                "\nshardfuzz run: interrupted twice; stopped without writing reports "
                f"(corpus entries found so far are in {config.corpus})",
                file=sys.stderr,
            )
            return 130
        if stop.reason is None and result.stopped.startswith("abandoned"):
            result.stopped = "budget"  # the case in flight outran the budget's end and was given up
        report = self.snapshot(result, final=True)
        progress.finish(report)
        write_reports(report, json_path=config.report, directory=config.report_dir)
        if self.sink is not None:
            self.sink.flushed(report)
        if config.pairs is not None and config.workers == 1:
            config.pairs.write_text("".join(f"{a}\t{b}\n" for a, b in sorted(result.reached_pairs)))
        print_summary(report)
        if result.stopped in EXIT_CODES:
            wrote = [str(p) for p in (config.report, config.report_dir) if p is not None]
            print(
                f"shardfuzz run: stopped by {result.stopped} after {result.cases_run} cases; "
                f"corpus in {config.corpus}{', reports in ' + ', '.join(wrote) if wrote else ''}",
                file=sys.stderr,
            )
            return EXIT_CODES[result.stopped]
        return 1 if report["failures"] and not config.exit_zero else 0
