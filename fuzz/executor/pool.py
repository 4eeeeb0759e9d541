"""A warm pool of rank processes that runs Cases and folds the ranks' reports into Verdicts.

The ranks join one gloo world once and keep it; a case of world size n uses the
cached prefix group ``[0..n-1]``, so save and load sides of different sizes run
in the same pool. A case that raises leaves the process group in an unknown state (collectives
out of step), so when every rank has answered, the ranks re-form their process
group on a fresh store (cheap: torch stays imported). A rank that crashed, or
that is stuck past the deadline, gets the pool torn down and started afresh.

Shutdown goes in stages, as HypoFuzz's worker hub does: ask (a stop message),
join with a deadline, terminate, kill.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import time
from multiprocessing.connection import wait

import attrs

from shardfuzz.case import Case, to_dict
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.unsupported import classify
from shardfuzz.verdict import RankReport, Verdict, converter

__all__ = ["RankPool", "PoolStartError", "scratch_root"]


class PoolStartError(RuntimeError):
    """The ranks could not form a process group."""


def scratch_root() -> str:
    """A RAM-backed directory for checkpoints where there is one (``/dev/shm``)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


class RankPool:
    """``world_size`` warm ranks. Use as a context manager, or call ``close()``.

    ``case_timeout`` is the deadline for one case in seconds; ``error_grace`` is how
    long the other ranks get to report once one rank has raised (a peer blocked
    in a collective never will).
    """

    def __init__(
        self,
        world_size: int = 4,
        *,
        target: str = DEFAULT_TARGET,
        case_timeout: float = 120.0,
        start_timeout: float = 120.0,
        error_grace: float = 3.0,
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.target = target
        self.case_timeout = case_timeout
        self.start_timeout = start_timeout
        self.error_grace = error_grace
        self.starts = 0
        self.resets = 0
        self._procs: list = []
        self._conns: list = []
        self._scratch: str | None = None
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
        from shardfuzz.executor import worker

        context = multiprocessing.get_context("spawn")
        self._scratch = tempfile.mkdtemp(prefix="shardfuzz-pool-", dir=scratch_root())
        store = os.path.join(self._scratch, "store")
        for rank in range(self.world_size):
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=worker.main,
                args=(rank, self.world_size, store, child_end, self.target),
                name=f"shardfuzz-rank-{rank}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self._procs.append(proc)
            self._conns.append(parent_end)
        self.starts += 1
        replies, missing = self._collect(self.start_timeout)
        failed = [r for r in replies.values() if r.get("op") == "failed"]
        if failed or missing:
            self.close()
            why = "; ".join(f"rank {r['rank']}: {r['error'].strip().splitlines()[-1]}" for r in failed)
            if missing:
                why += f"{'; ' if why else ''}ranks {sorted(missing)} did not report ready"
            raise PoolStartError(f"could not start {self.world_size} gloo ranks: {why}")

    def close(self) -> None:
        """Ask, join with a deadline, terminate, kill; then remove the scratch directory."""
        for conn in self._conns:
            try:
                conn.send_bytes(json.dumps({"op": "stop"}).encode())
            except (OSError, ValueError):
                pass
        _join_all(self._procs, 5.0)
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        _join_all(self._procs, 2.0)
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        _join_all(self._procs, 2.0)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def restart(self) -> None:
        self.close()
        self.start()

    # --- running cases ------------------------------------------------------

    def run(self, case: Case) -> Verdict:
        """Run ``case`` on the ranks and return its verdict; never raises for a case's failure."""
        if case.world_size > self.world_size:
            raise ValueError(f"case needs {case.world_size} ranks, the pool has {self.world_size}")
        self.start()
        started = time.perf_counter()
        checkpoint_dir = tempfile.mkdtemp(prefix="case-", dir=self._scratch)
        try:
            message = json.dumps({"op": "case", "case": to_dict(case), "checkpoint_dir": checkpoint_dir}).encode()
            for conn in self._conns:
                conn.send_bytes(message)
            verdict = self._verdict(self._collect(self.case_timeout, grace_after_error=self.error_grace))
        finally:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if verdict.status == "error" and not verdict.detail:
            self._reset()  # every rank answered: a new process group in the same processes
        elif verdict.status in ("error", "crash", "hang"):
            self.close()  # a rank is dead or stuck: the next run() starts a fresh pool
        return attrs.evolve(classify(verdict), seconds=time.perf_counter() - started)

    def _reset(self) -> None:
        """Re-form the process group on a fresh store; fall back to closing the pool."""
        self.resets += 1
        store = os.path.join(self._scratch, f"store-{self.resets}")
        message = json.dumps({"op": "reset", "store": store}).encode()
        try:
            for conn in self._conns:
                conn.send_bytes(message)
        except OSError:
            self.close()
            return
        replies, missing = self._collect(min(self.start_timeout, 30.0))
        if missing or any(r.get("op") != "ready" for r in replies.values()):
            self.close()

    def _collect(self, timeout: float, grace_after_error: float | None = None):
        """Replies by rank, and the ranks that sent none (dead, or still busy at the deadline)."""
        deadline = time.monotonic() + timeout
        replies: dict[int, dict] = {}
        dead: set[int] = set()
        waiting = {conn: rank for rank, conn in enumerate(self._conns)}
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready = wait(list(waiting) + [s for s, r in sentinels.items() if r not in dead], remaining)
            for item in ready:
                if item in waiting:
                    rank = waiting.pop(item)
                    try:
                        replies[rank] = json.loads(item.recv_bytes())
                    except (EOFError, OSError):
                        dead.add(rank)
                    else:
                        if grace_after_error is not None and replies[rank].get("error"):
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

    def _verdict(self, collected) -> Verdict:
        replies, missing = collected
        reports = [converter.structure(replies[r], RankReport) for r in sorted(replies)]
        errors = tuple(r.error for r in reports if r.error is not None)
        mismatches = tuple(m for r in reports for m in r.mismatches)
        dead = sorted(self._dead)
        if dead:
            codes = ", ".join(f"rank {r} exit {self._procs[r].exitcode}" for r in dead)
            return Verdict("crash", mismatches, errors, detail=f"rank process died: {codes}")
        if errors:
            detail = f"no report from ranks {sorted(missing)}" if missing else ""
            return Verdict("error", mismatches, errors, detail=detail)
        if missing:
            return Verdict("hang", mismatches, errors,
                           detail=f"ranks {sorted(missing)} did not finish within {self.case_timeout:g}s")
        if mismatches:
            return Verdict("mismatch", mismatches)
        return Verdict("pass")


def _join_all(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
