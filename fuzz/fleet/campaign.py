"""One campaign of a fleet, the body of a Ray actor: ``shardfuzz run`` with its findings sent on.

Each attempt (the first start, and each restart Ray makes after the actor or its node died) starts
from the fleet's corpus as it stands (so the bugs known then stay known), runs what is left of the
fleet's budget with a seed of its own, and sends each new finding to the collector before saving it
in its own scratch corpus (``RunSink``): a campaign that dies has lost nothing it had found. Its output
goes to a log on its own machine; the attempt's result says where, with the log's tail if it failed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import time
from pathlib import Path

import attrs

from shardfuzz.executor.stop import EXIT_CODES
from shardfuzz.search.run_config import RunConfig

__all__ = ["FleetCampaign", "attempt_seed"]

#: A campaign does not start an attempt with less of the budget left than this: its pool would not be warm.
LEAST_USEFUL_SECONDS = 5.0
#: Seconds between a campaign's questions to the collector whether the driver asked the fleet to stop (a case in
#: flight asks a few times a second; the answer is kept that long).
STOP_POLL_EVERY = 1.0
#: Seconds between a campaign's report snapshots to the collector. A snapshot costs the campaign more than a case
#: (``search.progress``); it feeds the live view and the report of an attempt that dies, while each finding is
#: sent the moment it is found, so it need not be as frequent as a ``--workers`` worker's report file (2 s).
SNAPSHOT_EVERY = 5.0


def attempt_seed(seed: int, campaign: int, attempt: int, campaigns: int) -> int:
    """Each attempt of each campaign draws from its own seed: the first attempts use seed, seed+1, ...;
    a restart does not replay the cases its dead attempt ran."""
    return seed + campaign + campaigns * attempt


class FleetCampaign:
    """Campaign ``index`` of ``campaigns``: ``config`` as the driver parsed it (its ``seed`` the fleet's), the
    name of the fleet's ``collector`` actor and the ``database`` (a ``HeldDatabase``, None, or "open" for a Redis
    each campaign opens). The collector says when its budget ends (counted from its first start)."""

    def __init__(self, index: int, campaigns: int, config: RunConfig, collector: str, database):
        import ray

        self.index, self.campaigns, self.config = index, campaigns, config
        self.collector, self.database = ray.get_actor(collector), database

    def run(self) -> dict:
        """One attempt: its result (campaign, attempt, exit code, node, log, the log's tail where it failed)."""
        import ray

        from shardfuzz.search.runner import run_command

        attempt, end = ray.get(self.collector.start.remote(self.index))
        scratch = Path(tempfile.mkdtemp(prefix=f"shardfuzz-fleet-{self.index}-{attempt}-"))
        corpus = scratch / "corpus"
        corpus.mkdir()
        for name, text in ray.get(self.collector.corpus_texts.remote()).items():
            (corpus / name).write_text(text)
        outcome = {"campaign": self.index, "attempt": attempt, "node": socket.gethostname()}
        budget = end - time.time()
        if budget < LEAST_USEFUL_SECONDS:
            shutil.rmtree(scratch, ignore_errors=True)
            return {**outcome, "code": 0, "skipped": f"{max(budget, 0):.0f} s of the budget left"}
        seed = attempt_seed(self.config.seed or 0, self.index, attempt, self.campaigns)
        config = attrs.evolve(  # a worker's config, but its report goes to the collector (the sink), not a file
            self.config.for_worker(self.index, seed=seed, report=None),
            corpus=corpus,
            budget=budget,
            pairs=None,
            flush_every=SNAPSHOT_EVERY,
        )
        log = scratch / "campaign.log"
        sink = _CollectorSink(self, attempt)
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = run_command(config, database=self.database, sink=sink)
        outcome.update(code=code, log=str(log))
        if code not in (0, 1, *EXIT_CODES.values()):  # ended otherwise than a campaign ends
            outcome["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        return outcome


class _CollectorSink:
    """The ``RunSink`` of one attempt: findings and report snapshots to the collector, stops from the driver."""

    def __init__(self, campaign: FleetCampaign, attempt: int):
        self.campaign, self.attempt = campaign, attempt
        self.files: dict[str, str] = {}  # signature -> its entry's file name in the fleet's corpus
        self.stopping: str | None = None
        self.asked = -STOP_POLL_EVERY  # time.monotonic() of the last question

    def found(self, entry) -> None:
        import ray

        from shardfuzz.findings.corpus import entry_text

        collector = self.campaign.collector
        self.files[entry.signature] = ray.get(
            collector.found.remote(self.campaign.index, self.attempt, entry_text(entry))
        )

    def explained(self, entry) -> None:
        from shardfuzz.findings.corpus import entry_text

        self.campaign.collector.explained.remote(self.campaign.index, self.attempt, entry_text(entry))

    def flushed(self, report: dict) -> None:
        fleet_corpus = self.campaign.config.corpus
        for failure in report.get("failures", []):  # the fleet's file, not this attempt's scratch copy
            name = self.files.get(failure["signature"])
            failure["corpus_file"] = str(fleet_corpus / name) if name else None
        report.update(attempt=self.attempt, node=socket.gethostname())
        self.campaign.collector.flushed.remote(self.campaign.index, self.attempt, report)

    def stop_reason(self) -> str | None:
        """The driver's stop, from the collector (asked at most once a ``STOP_POLL_EVERY``). Not a call on the
        campaign's own actor: an actor that serves a call beside ``run`` runs its calls on threads, and Ray's main
        thread then wakes to check for signals beside them: 0.21 s of CPU in a 30 s call against 0.06 s where the
        call runs on the main thread (Ray 2.60, 2026-12-06, docs/measurements.md)."""
        now = time.monotonic()
        if self.stopping is None and now - self.asked >= STOP_POLL_EVERY:
            import ray

            self.asked = now
            self.stopping = ray.get(self.campaign.collector.stop_reason.remote())
        return self.stopping
