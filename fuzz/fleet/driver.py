"""``shardfuzz fleet``'s driver: place the campaigns, show the fleet, stop it, write one report.

It joins the Ray cluster ``--address`` names (or starts a local one), starts the collector and, without
a Redis, the example database on its own node (they write to its disk), then the campaigns, each an
actor that declares ``--cpus-per-campaign`` and ``--gpus-per-campaign`` and that Ray restarts up to
``--max-restarts`` times, with what is left of the budget, if it or its node dies. Until they end it
polls the collector: new findings as they are saved, and the campaigns' report snapshots merged into
one live view. SIGINT or SIGTERM asks every campaign to stop (they write their reports and end within
seconds); a campaign that has not ended ``STOP_GRACE`` seconds later is killed. A second SIGINT kills
them at once; the report is written from their last snapshots either way.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import uuid

from shardfuzz.executor.stop import EXIT_CODES, StopFlag
from shardfuzz.executor.torchrun import in_torchrun
from shardfuzz.fleet.options import FleetOptions
from shardfuzz.search.database import on_a_server
from shardfuzz.search.run_config import RunConfig

__all__ = ["run_fleet", "STOP_GRACE", "BUDGET_GRACE"]

#: Seconds a campaign asked to stop has to end before it is killed.
STOP_GRACE = 20.0
#: Seconds past the budget's end before the driver asks the campaigns still running to stop (a campaign
#: keeps its own budget; this is for one that cannot, say a node that stopped answering).
BUDGET_GRACE = 30.0
#: Seconds between the driver's polls of the collector (news and snapshots: the panel shows every 2 s at most).
POLL_EVERY = 2.0
#: Seconds the driver waits on its campaigns at a time: a stop (its own SIGINT) is passed on within this.
WAIT_EVERY = 1.0


def run_fleet(config: RunConfig, options: FleetOptions) -> int:
    """The fleet ``options`` place, each campaign run as ``config`` says; the exit code (as ``shardfuzz run``'s)."""
    refusal = _refusal(config)
    if refusal:
        print(f"shardfuzz fleet: {refusal}", file=sys.stderr)
        return 2
    try:
        import ray
    except ImportError as exc:
        print(f"shardfuzz fleet: needs Ray: pip install 'shardfuzz[ray]' ({exc})", file=sys.stderr)
        return 2
    from shardfuzz.targets import DEFAULT_TARGET, resolve_target

    try:
        resolve_target(config.target or DEFAULT_TARGET)  # here, once, rather than in every campaign
    except ValueError as exc:
        print(f"shardfuzz fleet: {exc}", file=sys.stderr)
        return 2
    config = _with_seed(config)
    why_not = _join(ray, options, config.world_size)
    if why_not:
        print(f"shardfuzz fleet: {why_not}", file=sys.stderr)
        ray.shutdown()
        return 2
    try:
        fleet = _Fleet(ray, config, options)
        why_not = fleet.ready()
        if why_not:
            print(f"shardfuzz fleet: {why_not}", file=sys.stderr)
            return 2
        return fleet.run()
    finally:
        ray.shutdown()


def _refusal(config: RunConfig) -> str:
    if config.workers != 1:
        return "--workers is the one-machine scale-out; a fleet's campaigns are --campaigns"
    if config.across_pythons:
        return "--save-python/--load-python (two torches) are not run as a fleet yet; use shardfuzz run"
    if in_torchrun():
        return "run the fleet's driver as a plain command, not under torchrun: each campaign starts its own ranks"
    return ""


def _with_seed(config: RunConfig) -> RunConfig:
    import attrs

    return config if config.seed is not None else attrs.evolve(config, seed=random.SystemRandom().randrange(2**32))


def _join(ray, options: FleetOptions, world_size: int) -> str:
    """Join (or start) the cluster; why the fleet does not fit it, or ''."""
    cpus, gpus = options.cpus(world_size) * options.campaigns, options.gpus_per_campaign * options.campaigns
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster sends nothing anywhere unless asked
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
    try:
        if options.address is None:  # a local cluster: declare what the fleet needs, at least this machine's cores
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)), **quiet)  # GPUs: those Ray finds
        else:
            ray.init(address=options.address, **quiet)
    except Exception as exc:  # Ray raises several kinds (ConnectionError, RuntimeError, its own) for one problem
        where = f"join the Ray cluster at {options.address!r}" if options.address else "start a local Ray cluster"
        return f"cannot {where}: {type(exc).__name__}: {exc}"
    have = ray.cluster_resources()
    short = [
        f"{need:g} {name} ({options.campaigns} campaigns x {need / options.campaigns:g}) but the cluster has "
        f"{have.get(name, 0):g}"
        for name, need in (("CPU", cpus), ("GPU", gpus))
        if need > have.get(name, 0)
    ]
    if short:
        return "the fleet needs " + "; ".join(short) + ": lower --campaigns, --cpus-per-campaign or --gpus-per-campaign"
    return ""


class _Fleet:
    def __init__(self, ray, config: RunConfig, options: FleetOptions):
        self.ray, self.config, self.options = ray, config, options
        self.stop = StopFlag()
        self.end = time.time() + config.budget  # the campaigns' ends are a little later: each counts from its start
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
        from shardfuzz.fleet.collector import Collector

        # Named, and found by name: an actor that Ray may restart must not take actor handles as arguments
        # (ray-project/ray#53727: its restart fails once they go out of scope).
        run_id = uuid.uuid4().hex[:12]
        self.collector_name = f"shardfuzz-collector-{run_id}"
        self.collector = ray.remote(num_cpus=0, scheduling_strategy=here, name=self.collector_name)(Collector).remote(
            str(config.corpus), config.budget
        )
        self.database_host = None
        self.database = self._database(here, run_id)
        self.campaigns: list = []
        self.meta = {
            "torch": _torch_version(),
            "budget_seconds": config.budget,
            "seed": config.seed,
            "world_size": config.world_size,
            "target": config.target,
            "launcher": "ray",
            "campaigns": options.campaigns,
            "address": options.address or "local",
            "database": config.database,
        }

    def ready(self) -> str:
        """Start the campaigns once the collector and the driver's database answer (a campaign finds them by name,
        which Ray registers as they start); why not, where one of them cannot start (a database path that is a
        file, say), or ''."""
        for what, probe in (
            ("collector", lambda: self.collector.poll.remote(reports=False)),
            ("example database", lambda: self.database_host and self.database_host.fetch.remote(b"ready")),
        ):
            try:
                reference = probe()
                if reference is not None:
                    self.ray.get(reference)
            except Exception as exc:  # Ray wraps the actor's own error (a DatabaseError, an OSError) in its own
                return f"the fleet's {what} did not start: {getattr(exc, 'cause', None) or exc}"
        from shardfuzz.fleet.campaign import FleetCampaign

        config, options = self.config, self.options
        actor = self.ray.remote(
            num_cpus=options.cpus(config.world_size),
            num_gpus=options.gpus_per_campaign,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
            scheduling_strategy="SPREAD",
        )(FleetCampaign)
        self.campaigns = [  # started here: their budgets count from their own starts
            actor.remote(index, options.campaigns, config, self.collector_name, self.database)
            for index in range(options.campaigns)
        ]
        return ""

    def _database(self, here, run_id: str):
        """What each campaign gets as its example database: "open" (a Redis each opens), None, or the driver's
        (a ``HeldDatabase``: the name of the actor that serves it)."""
        spec = self.config.database
        if spec is None or spec.lower() == "none":
            return None if self.config.replay_from is None else self._held(here, "none", run_id)
        if on_a_server(spec):
            return "open"
        return self._held(here, spec, run_id)

    def _held(self, here, spec: str, run_id: str):
        from shardfuzz.fleet.held_database import DatabaseHost, HeldDatabase

        name = f"shardfuzz-database-{run_id}"
        self.database_host = self.ray.remote(num_cpus=0, scheduling_strategy=here, name=name)(DatabaseHost).remote(
            spec, self.config.replay_from
        )
        return HeldDatabase(name)

    def run(self) -> int:
        from shardfuzz.findings.report_output import print_summary, write_reports
        from shardfuzz.search.progress import Progress

        progress = Progress(self.config.budget, plain=self.config.plain or None)
        progress.every = max(progress.every, 2.0)  # the panel too: the campaigns' snapshots come every few seconds
        pending = {campaign.run.remote(): index for index, campaign in enumerate(self.campaigns)}
        outcomes: dict[int, dict] = {}
        try:
            with self.stop:
                self._watch(pending, outcomes, progress)
        except KeyboardInterrupt:  # a second SIGINT: no more waiting
            for campaign in self.campaigns:
                self.ray.kill(campaign, no_restart=True)
            self.stop.request("SIGINT")
            progress.message("shardfuzz fleet: interrupted twice; campaigns killed")
        news, reports = self.ray.get(self.collector.poll.remote())
        for line in news:
            progress.message(line)
        from shardfuzz.findings.run_report import merge_reports

        report = merge_reports(reports, meta=self.meta)
        progress.finish(report)
        write_reports(report, json_path=self.config.report, directory=self.config.report_dir)
        print_summary(report)
        return self._verdict(report, outcomes)

    def _watch(self, pending: dict, outcomes: dict[int, dict], progress) -> None:
        """Until every campaign's run has returned: poll, show, pass a stop on, kill what overstays it."""
        from shardfuzz.findings.run_report import merge_reports

        ray, asked = self.ray, None
        last_poll = 0.0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_EVERY)
            for reference in done:
                index = pending.pop(reference)
                outcomes[index] = self._outcome(index, reference)
            if time.monotonic() - last_poll >= POLL_EVERY:
                last_poll = time.monotonic()
                showing = progress.due()
                news, reports = ray.get(self.collector.poll.remote(reports=showing))
                for line in news:
                    progress.message(line)
                if reports:
                    progress.show(merge_reports(reports, meta=self.meta))
            if asked is None and (self.stop or time.time() > self.end + BUDGET_GRACE):
                reason = self.stop.reason or "SIGTERM"
                asked = time.monotonic()
                progress.message(
                    f"shardfuzz fleet: {self.stop.reason or 'past the budget'}: asking the campaigns to stop"
                )
                ray.get(self.collector.request_stop.remote(reason))  # each campaign asks it (``campaign``)
            if asked is not None and pending and time.monotonic() - asked > STOP_GRACE:
                for index in pending.values():
                    ray.kill(self.campaigns[index], no_restart=True)
                    outcomes[index] = {
                        "campaign": index,
                        "code": 137,
                        "killed": f"still running {STOP_GRACE:g} s after",
                    }
                pending.clear()

    def _outcome(self, index: int, reference) -> dict:
        try:
            return self.ray.get(reference)
        except Exception as exc:  # its actor died more often than it may restart, or the attempt raised
            return {"campaign": index, "code": 2, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}

    def _verdict(self, report: dict, outcomes: dict[int, dict]) -> int:
        broken = {i: o for i, o in outcomes.items() if o.get("code") not in (0, 1, *EXIT_CODES.values())}
        for index, outcome in sorted(broken.items()):
            why = outcome.get("error") or outcome.get("killed") or "\n  ".join(outcome.get("log_tail", []))
            print(f"shardfuzz fleet: campaign {index} ended with {outcome.get('code')}: {why}", file=sys.stderr)
        rows = report.get("worker_reports", [])
        print(
            f"shardfuzz fleet: {self.options.campaigns} campaigns; "
            + ", ".join(
                f"campaign {r.get('worker')} (attempt {r.get('attempt', 0)}): {r.get('cases_run')} cases" for r in rows
            )
        )
        if self.stop.reason:
            return EXIT_CODES[self.stop.reason]
        if broken:
            return 2
        return 1 if report["failures"] and not self.config.exit_zero else 0


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
