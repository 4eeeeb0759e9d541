"""A warm pool of rank processes that runs Cases and folds the ranks' reports into Verdicts.

The ranks join one gloo world once and keep it; a case of world size n uses the
cached prefix group ``[0..n-1]``, so save and load sides of different sizes run
in the same pool. A case that raises leaves the process group in an unknown state (collectives
out of step), so when every rank has answered, the ranks re-form their process
group on a fresh store (cheap: torch stays imported). A rank that crashed, or
that is stuck past the deadline, gets the pool torn down and started afresh.

Shutdown goes in stages (``rank_processes``): ask, join with a deadline, terminate, kill.

Each rank writes its output to ``rank-N.log`` in the pool's scratch directory
(truncated before each case) and publishes its phase in shared memory, so a
crash is reported with the signal or exit code, the phase and the last lines the
rank printed; on a hang the pool asks every stuck rank for its Python stacks
(SIGUSR1, faulthandler) before killing it. A rank that dies outside a case (in
process-group teardown or between cases) is logged as a pool event, not blamed
on the next case. Scratch directories carry the pool's pid, and a new pool
removes those whose owner is gone (one killed with SIGKILL cannot clean up).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait

import attrs

from shardfuzz.case import DEVICES, Case, to_dict
from shardfuzz.executor.admission import admit, cannot_run
from shardfuzz.executor.deadlines import MeasuredDeadlines, deadline_for
from shardfuzz.executor.fold import fold_reports, report_of
from shardfuzz.executor.interpreters import Interpreter
from shardfuzz.executor.messages import CaseReport, Failed, Message, Ready, Reset, RunCase, decode, encode
from shardfuzz.executor.rank_processes import how_it_ended, spawn_ranks, stop_in_stages
from shardfuzz.executor.referee import refereed
from shardfuzz.executor.stop import StopRequested
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.unsupported import classify
from shardfuzz.verdict import STUCK_RANK_STACKS, Verdict

__all__ = [
    "CaseAbandoned",
    "RankPool",
    "PoolEvent",
    "PoolStartError",
    "scratch_root",
]

_SCRATCH_PREFIX = "shardfuzz-pool-"
#: Phases in which a rank reads its pipe (anything else is a phase of a case).
_BETWEEN_CASES = frozenset({"idle", "start", "reset", "teardown"})


class PoolStartError(RuntimeError):
    """The ranks could not form a process group."""


class CaseAbandoned(StopRequested):
    """``run`` gave up on the case in flight because ``abandon()`` said so; the ranks were stopped."""


@attrs.frozen
class PoolEvent:
    """Something that happened to a rank outside a case: a crash in teardown or between cases."""

    kind: str  # "teardown-crash" | "idle-crash"
    rank: int
    how: str
    log_tail: str = ""


def sweep_stale_scratch(root: str | None = None) -> list[str]:
    """Remove scratch directories of pools whose process is gone; return their paths."""
    removed = []
    for path in glob.glob(os.path.join(root or scratch_root(), _SCRATCH_PREFIX + "*")):
        owner = os.path.basename(path)[len(_SCRATCH_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_root() -> str:
    """A RAM-backed directory for checkpoints where there is one (``/dev/shm``)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


class RankPool:
    """``world_size`` warm ranks. Use as a context manager, or call ``close()``.

    ``case_timeout`` is the deadline for one case in seconds, or ``None`` to derive
    it from the case's size (``deadline_for``); ``error_grace`` is how long the
    other ranks get to report once one rank has raised (a peer blocked in a
    collective never will); ``stack_grace`` how long stuck ranks get to dump stacks.
    ``recycle_after`` cases on the same processes, the ranks are replaced by fresh
    ones between cases: torch's caches grow slowly with every distinct shape
    (about 0.1 MiB a case at world size 4, see bench/bench_pool.py --rss-cases),
    and an overnight run should not carry that forever. ``None`` never recycles.
    ``abandon``, polled a few times a second while a case runs, may answer True
    to give up on it (a campaign asked to stop): the ranks are stopped and
    ``run`` raises ``CaseAbandoned``.
    ``device`` ``cuda``: rank ``i`` below the GPU count owns GPU ``i`` and the world
    is ``cpu:gloo,cuda:nccl``, so a case may put either side on CPU or GPU; a case
    with a CUDA side on more ranks than GPUs (or any, on a ``cpu`` pool) is
    answered ``unsupported`` with the reason, without running.
    ``interpreter`` (``interpreters.probe``): the Python the ranks run in, with its own
    torch (default: this one); ``run(case, phase="save" | "load")`` runs half a case
    there, for a ``CrossVersionPool``.
    """

    def __init__(
        self,
        world_size: int = 4,
        *,
        target: str = DEFAULT_TARGET,
        case_timeout: float | None = None,
        start_timeout: float = 120.0,
        error_grace: float = 3.0,
        stack_grace: float = 1.0,
        recycle_after: int | None = 5000,
        abandon: Callable[[], bool] | None = None,
        device: str = "cpu",
        deadlines: MeasuredDeadlines | None = None,
        interpreter: Interpreter | None = None,
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
        self.world_size = world_size
        self.device = device
        self.target = target
        self.case_timeout = case_timeout
        self.start_timeout = start_timeout
        self.error_grace = error_grace
        self.stack_grace = stack_grace
        if recycle_after is not None and recycle_after < 1:
            raise ValueError(f"recycle_after must be >= 1 or None, got {recycle_after}")
        self.recycle_after = recycle_after
        self.abandon = abandon
        self.deadlines = deadlines  # None: every case gets case_timeout or the generic deadline_for(case)
        self.interpreter = interpreter
        self._cases_since_start = 0
        self.starts = 0
        self.resets = 0
        self.events: list[PoolEvent] = []
        self._procs: list = []
        self._conns: list = []
        self._phases: list = []
        self._scratch: str | None = None
        self._stopping = False
        self._dead: set[int] = set()  # ranks seen dead by the last _collect

    # --- lifecycle -------------------------------------------------------

    def __enter__(self) -> RankPool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return bool(self._procs)

    def start(self) -> None:
        if self.running:
            return
        from shardfuzz.capabilities import capabilities

        if self.interpreter is None:
            capabilities()  # probe here, once: every rank's warm-up reads the answer from the probe's cache
        sweep_stale_scratch()
        self._scratch = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_root())
        self._procs, self._conns, self._phases = spawn_ranks(
            self.world_size,
            store=os.path.join(self._scratch, "store"),
            target=self.target,
            device=self.device,
            log_of=self._log,
            interpreter=self.interpreter,
        )
        self.starts += 1
        if self.deadlines is not None:
            self.deadlines.started()
        self._cases_since_start = 0
        collected = self._collect(self.start_timeout, abandonable=True)
        if collected is None:
            self.close()
            raise CaseAbandoned("abandoned starting the ranks")
        replies, missing = collected
        failed = [r for r in replies.values() if isinstance(r, Failed)]
        if failed or missing:
            tails = {r: self._tail(r, 5) for r in sorted(missing)}
            self.close()
            why = "; ".join(f"rank {r.rank}: {r.error.strip().splitlines()[-1]}" for r in failed)
            if missing:
                why += f"{'; ' if why else ''}ranks {sorted(missing)} did not report ready"
                why += "".join(f"\n  rank {r} printed: {t}" for r, t in tails.items() if t)
            python = f" under {self.interpreter.describe()}" if self.interpreter is not None else ""
            raise PoolStartError(f"could not start {self.world_size} {self._backend()} ranks{python}: {why}")
        shutil.rmtree(os.path.join(self._scratch, "warm-up"), ignore_errors=True)

    def close(self) -> None:
        """Stop the ranks in stages (``rank_processes.stop_in_stages``); then remove the scratch directory.

        A rank that was asked to stop and exits with a signal or a non-zero code
        crashed in process-group teardown: that is recorded in ``events``.
        """
        asked = stop_in_stages(
            self._procs, self._conns, reads_its_pipe=lambda rank: self._phase(rank) in _BETWEEN_CASES
        )
        for rank, code in asked.items():
            if code not in (0, None):
                self.events.append(PoolEvent("teardown-crash", rank, how_it_ended(code), self._tail(rank)))
        self._procs, self._conns, self._phases = [], [], []
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def restart(self) -> None:
        self.close()
        self.start()

    def _backend(self) -> str:
        return "gloo+nccl" if self.device == "cuda" else "gloo"

    def cannot_run(self, case: Case) -> str:
        """Why this pool cannot run ``case`` here, or '' (``admission.cannot_run``)."""
        return cannot_run(case, world_size=self.world_size, target=self.target, device=self.device)

    # --- running cases ------------------------------------------------------

    def run(
        self,
        case: Case,
        *,
        generic_deadline: bool = False,
        phase: str = "both",
        checkpoint_dir: str | None = None,
        admitted: bool = False,
    ) -> Verdict:
        """Run ``case`` on the ranks and return its verdict; never raises for a case's failure.

        ``generic_deadline``: ignore measured ``deadlines`` for this case (confirming a hang).
        ``phase``: "save" or "load" runs that half of the case only (``roundtrip.run_case``), on a
        ``checkpoint_dir`` the caller owns (removed here only for the whole case). ``admitted``: the caller
        admitted the case (``PerSidePools`` admits a half against the pool of its side's size)."""
        refused = None if admitted else admit(case, world_size=self.world_size, target=self.target, device=self.device)
        if refused is not None:
            return refused
        self._restart_if_a_rank_died()
        if self.recycle_after is not None and self._procs and self._cases_since_start >= self.recycle_after:
            self.close()  # planned: fresh ranks, fresh caches
        self.start()
        started = time.perf_counter()
        self._cases_since_start += 1
        timeout = self.case_timeout if self.case_timeout is not None else deadline_for(case)
        # A compiled side traces on its first steps, seconds that the measured cases say nothing about (a 10 s
        # measured deadline once called a slow trace on a busy machine a hang): those keep the generic one, as do
        # an optimizer's whose cases are slow (a torchao low-bit case once passed as a hang at 20 s; it takes 30).
        compiles = case.save.compiled or case.load.compiled or case.optimizer.slow
        if self.deadlines is not None and self.case_timeout is None and not generic_deadline and not compiles:
            timeout = self.deadlines.deadline(timeout)
        owned = checkpoint_dir is None
        checkpoint_dir = checkpoint_dir or os.path.join(self._started_scratch, "case")
        for rank in range(self.world_size):
            os.truncate(self._log(rank), 0)
        try:
            message = encode(RunCase(to_dict(case), checkpoint_dir, phase))
            for conn in self._conns:
                conn.send_bytes(message)
            collected = self._collect(timeout, grace_after_error=self.error_grace, abandonable=True)
            if collected is None:
                self.close()
                raise CaseAbandoned("abandoned the case in flight")
            verdict = self._verdict(collected, timeout)
        finally:
            if owned:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if self.deadlines is not None and verdict.status not in ("hang", "crash"):
            self.deadlines.record(time.perf_counter() - started)
        if verdict.leaves_ranks_stuck:
            self.close()  # a rank is dead or stuck: the next run() starts a fresh pool
        elif verdict.status == "error":
            self._reset()  # every rank answered: a new process group in the same processes
        verdict = attrs.evolve(classify(verdict), seconds=time.perf_counter() - started)
        if phase != "both":  # half a case: its other half, elsewhere, decides (``PerSidePools.run``)
            return verdict
        return refereed(
            case, verdict, lambda wider: self.run(wider, generic_deadline=generic_deadline, admitted=admitted)
        )

    def rss_bytes(self) -> int:
        """Resident memory of all rank processes together (Linux; 0 elsewhere)."""
        total = 0
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        for proc in self._procs:
            try:
                with open(f"/proc/{proc.pid}/statm") as handle:
                    total += int(handle.read().split()[1]) * page
            except (OSError, ValueError, IndexError):
                pass
        return total

    @property
    def _started_scratch(self) -> str:
        """The scratch folder of the running ranks (their logs, stores, checkpoints)."""
        assert self._scratch is not None, "the pool has not started"
        return self._scratch

    def _log(self, rank: int) -> str:
        return os.path.join(self._started_scratch, f"rank-{rank}.log")

    def _tail(self, rank: int, lines: int = 30) -> str:
        """The last ``lines`` lines rank ``rank`` wrote (its stderr and stdout)."""
        try:
            with open(self._log(rank), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64_000))
                text = handle.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""
        kept = [line for line in text.splitlines() if line.strip() and "Warning" not in line]
        return "\n".join(kept[-lines:])

    def _phase(self, rank: int) -> str:
        return self._phases[rank].value.decode(errors="replace") or "start"

    def _restart_if_a_rank_died(self) -> None:
        """A rank that died since the last case (not in one): log it, and start afresh."""
        dead = [r for r, proc in enumerate(self._procs) if not proc.is_alive()]
        for rank in dead:
            self.events.append(
                PoolEvent("idle-crash", rank, how_it_ended(self._procs[rank].exitcode), self._tail(rank))
            )
        if dead:
            self.close()

    def _dump_stacks(self, ranks) -> str:
        """Ask each stuck rank for every thread's Python stack (faulthandler on SIGUSR1)."""
        ranks = [r for r in sorted(ranks) if self._procs[r].is_alive()]
        for rank in ranks:
            try:
                os.kill(self._procs[rank].pid, signal.SIGUSR1)
            except (ProcessLookupError, AttributeError):
                pass
        if ranks:
            time.sleep(self.stack_grace)
        return "\n\n".join(
            f"--- rank {r} (in {self._phase(r)}), {STUCK_RANK_STACKS} ---\n{self._tail(r, 80)}" for r in ranks
        )

    def _reset(self) -> None:
        """Re-form the process group on a fresh store; fall back to closing the pool."""
        self.resets += 1
        store = os.path.join(self._started_scratch, f"store-{self.resets}")
        message = encode(Reset(store))
        try:
            for conn in self._conns:
                conn.send_bytes(message)
        except OSError:
            self.close()
            return
        replies, missing = self._collect(min(self.start_timeout, 30.0))
        for rank in sorted(self._dead):  # died while destroying or re-forming its process group
            self.events.append(
                PoolEvent("teardown-crash", rank, how_it_ended(self._procs[rank].exitcode), self._tail(rank))
            )
        if missing or any(not isinstance(r, Ready) for r in replies.values()):
            self.close()

    def _collect(self, timeout: float, grace_after_error: float | None = None, abandonable: bool = False):
        """Replies by rank, and the ranks that sent none (dead, or still busy at the deadline).

        ``None`` when ``abandonable`` and ``self.abandon()`` said to give up.
        """
        poll = 0.25 if abandonable and self.abandon is not None else None
        deadline = time.monotonic() + timeout
        replies: dict[int, Message] = {}
        dead: set[int] = set()
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready = wait(
                list(waiting) + [s for s, r in sentinels.items() if r not in dead],
                remaining if poll is None else min(remaining, poll),
            )
            if poll is not None and not ready and self.abandon is not None and self.abandon():
                return None
            for item in ready:
                if item in waiting:
                    rank = waiting.pop(item)
                    try:
                        replies[rank] = reply = decode(item.recv_bytes())  # type: ignore[union-attr]  # a pipe
                    except (EOFError, OSError):
                        dead.add(rank)
                    else:
                        if grace_after_error is not None and isinstance(reply, CaseReport) and reply.raised:
                            deadline = min(deadline, time.monotonic() + grace_after_error)
                elif item in sentinels:
                    rank = sentinels[item]
                    dead.add(rank)
            # A dead rank's pipe may still hold its last reply; stop waiting on it otherwise.
            for conn, rank in list(waiting.items()):
                if rank in dead and not conn.poll():
                    waiting.pop(conn)
            if dead and grace_after_error is not None:
                deadline = min(deadline, time.monotonic() + grace_after_error)
        missing = set(range(self.world_size)) - set(replies)
        self._dead = dead
        return replies, missing

    def _verdict(self, collected, timeout: float) -> Verdict:
        replies, missing = collected
        reports = [report_of(rank, replies[rank]) for rank in sorted(replies)]
        errors = tuple(r.error for r in reports if r.error is not None)
        mismatches = tuple(m for r in reports for m in r.mismatches)
        dead = sorted(self._dead)
        if dead:
            time.sleep(0.05)  # let the kernel finish reaping, so exitcode is set
            parts, logs = [], []
            for rank in dead:
                proc = self._procs[rank]
                proc.join(1.0)
                when = "after its report (teardown)" if rank in replies else f"in {self._phase(rank)}"
                parts.append(f"rank {rank} {how_it_ended(proc.exitcode, long=True)} {when}")
                logs.append(f"--- rank {rank}, last output ---\n{self._tail(rank)}")
            first = dead[0]
            where = "teardown" if first in replies else self._phase(first)
            return Verdict(
                "crash",
                mismatches,
                errors,
                detail="rank process died: " + "; ".join(parts),
                where=where,
                how=how_it_ended(self._procs[first].exitcode),
                diagnostics="\n\n".join(logs),
            )
        return fold_reports(reports, missing, timeout=timeout, phase_of=self._phase, stacks_of=self._dump_stacks)
