"""Ranks started by ``torchrun``: rank 0 drives the campaign and runs its share; the others follow.

``torchrun --standalone --nproc-per-node 4 -m shardfuzz run --budget 1h`` (or
``--nnodes``/``--rdzv-endpoint`` across machines) starts every rank; ``run``
sees torchrun's environment and comes here. The ranks join one gloo world
(``env://``). Messages go through torchrun's key-value store, not through
collectives, so a case that leaves the collectives out of step cannot garble
them: rank 0 sets ``case/N``, every rank runs its share of case N and sets
``report/N/RANK``, rank 0 folds the reports into a verdict. After a case that
raised, every rank re-forms its process group on a fresh store prefix.

What a warm pool of child processes gives and this does not: a rank that
crashes ends the torchrun job (torchrun reports it), and a rank stuck past the
deadline cannot be killed, so the campaign ends with the hang recorded. A peer
left blocked in a collective by a rank that raised gets out through gloo's
timeout (``collective_timeout``, 10 s: cases take well under a second), so it
should stay below the case deadline (30 s and up). Across
nodes the checkpoint directory must be on a filesystem every node sees
(``--checkpoint-dir``).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
import warnings

import attrs

from shardfuzz.case import Case, to_dict
from shardfuzz.executor.admission import admit, cannot_run
from shardfuzz.executor.deadlines import deadline_for
from shardfuzz.executor.fold import fold_reports, report_of
from shardfuzz.executor.messages import CaseReport, Message, ProtocolError, Reform, RunCase, Stop, decode, encode
from shardfuzz.executor.stop import StopRequested
from shardfuzz.unsupported import classify
from shardfuzz.verdict import Verdict

__all__ = ["TorchrunWorld", "in_torchrun", "follow"]


def in_torchrun() -> bool:
    """Whether this process was started by torchrun (its elastic agent sets these)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ and "WORLD_SIZE" in os.environ


class _World:
    """This rank's membership: the gloo world, the control store, the case context."""

    def __init__(self, target_spec: str, checkpoint_root: str | None, collective_timeout: float):
        import torch
        import torch.distributed as dist

        from shardfuzz.targets import resolve_target

        torch.set_num_threads(1)
        warnings.simplefilter("ignore")  # torch's deprecation chatter, once per case per rank
        logging.getLogger("torch.distributed").setLevel(logging.ERROR)
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.target = resolve_target(target_spec)
        self.timeout = datetime.timedelta(seconds=collective_timeout)
        dist.init_process_group("gloo", timeout=self.timeout)
        self._base_store = dist.distributed_c10d._get_default_store()
        self.control = dist.PrefixStore("shardfuzz/control", self._base_store)
        self.generation = 0
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        from shardfuzz.executor.pool import scratch_root

        self.checkpoint_root = checkpoint_root or os.path.join(scratch_root(), f"shardfuzz-torchrun-{run_id}")
        self.ctx = self._context()
        from shardfuzz.executor.worker import warm_up

        warm_up(self.ctx, os.path.join(self.checkpoint_root, "warm-up"))

    def _context(self):
        from shardfuzz.rank.roundtrip import RankContext

        ctx = RankContext(self.rank, self.world_size)
        ctx.create_groups()
        return ctx

    def reform(self) -> None:
        """A new process group on a fresh prefix of the same store (after a case that raised)."""
        import torch.distributed as dist

        self.generation += 1
        dist.destroy_process_group()
        store = dist.PrefixStore(f"shardfuzz/world-{self.generation}", self._base_store)
        dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world_size, timeout=self.timeout)
        self.ctx = self._context()

    def run_share(self, order: RunCase) -> CaseReport:
        from shardfuzz.executor.worker import run_share

        return run_share(order, self.ctx, self.target)

    def get(self, key: str, timeout: float) -> bytes | None:
        """The value at ``key`` once some rank sets it, or None after ``timeout`` seconds.

        Polls with ``check`` rather than blocking in ``wait``: a timed-out wait logs a
        warning from C++ every time, and rank 0 must look up between polls anyway.
        """
        deadline = time.monotonic() + timeout
        while not self.control.check([key]):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
        return self.control.get(key)

    def shut_down(self) -> None:
        import torch.distributed as dist

        try:
            dist.destroy_process_group()
        except BaseException:
            pass


class TorchrunWorld:
    """Rank 0's side: ``run(case) -> Verdict`` like ``RankPool``, over torchrun's ranks."""

    def __init__(
        self,
        *,
        target: str,
        case_timeout: float | None = None,
        checkpoint_dir: str | None = None,
        collective_timeout: float = 10.0,
        abandon=None,
    ):
        self.world = _World(target, checkpoint_dir, collective_timeout)
        self.target = target
        self.world_size = self.world.world_size
        self.case_timeout = case_timeout
        self.abandon = abandon
        self.starts, self.resets = 1, 0
        self.events: list = []
        self._next = 0
        self._stuck = ""

    def _send(self, message: Message) -> int:
        number = self._next
        self._next += 1
        self.world.control.set(f"case/{number}", encode(message).decode())
        return number

    def cannot_run(self, case: Case) -> str:
        """Why torchrun's ranks cannot run ``case``, or '' (``admission.cannot_run``; they run on CPU)."""
        return cannot_run(case, world_size=self.world_size, target=self.target)

    def run(self, case: Case) -> Verdict:
        if self._stuck:
            raise StopRequested(f"torchrun ranks are stuck ({self._stuck}); the campaign cannot go on")
        refused = admit(case, world_size=self.world_size, target=self.target)  # torchrun's ranks run on CPU
        if refused is not None:
            return refused
        started = time.perf_counter()
        timeout = self.case_timeout if self.case_timeout is not None else deadline_for(case)
        checkpoint_dir = os.path.join(self.world.checkpoint_root, "case")
        order = RunCase(to_dict(case), checkpoint_dir)
        number = self._send(order)
        replies: dict[int, Message] = {0: self.world.run_share(order)}
        deadline = time.monotonic() + timeout
        for rank in range(1, self.world_size):
            while rank not in replies and time.monotonic() < deadline:
                reply = self.world.get(f"report/{number}/{rank}", min(0.25, max(0.01, deadline - time.monotonic())))
                if reply is not None:
                    replies[rank] = decode(reply)
                elif self.abandon is not None and self.abandon():
                    self._stuck = "abandoned mid-case"
                    raise StopRequested("abandoned the case in flight")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        missing = set(range(self.world_size)) - set(replies)
        reports = [report_of(rank, replies[rank]) for rank in sorted(replies)]
        verdict = fold_reports(reports, missing, timeout=timeout)
        if verdict.status == "hang":
            self._stuck = verdict.detail
        elif verdict.status == "error":
            self.resets += 1
            self._send(Reform())
            self.world.reform()
        return attrs.evolve(classify(verdict), seconds=time.perf_counter() - started)

    def close(self) -> None:
        """Tell the followers to stop (unless they are stuck) and leave the world."""
        if not self._stuck:
            self._send(Stop())
        shutil.rmtree(self.world.checkpoint_root, ignore_errors=True)
        self.world.shut_down()

    def __enter__(self) -> TorchrunWorld:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def follow(*, target: str, checkpoint_dir: str | None = None, collective_timeout: float = 10.0) -> int:
    """A rank other than 0: run each case rank 0 posts until it says stop. Returns an exit code."""
    world = _World(target, checkpoint_dir, collective_timeout)
    number = 0
    while True:
        raw = world.get(f"case/{number}", 60.0)
        if raw is None:
            continue  # rank 0 is drawing or shrinking; torchrun ends this rank if rank 0 dies
        message = decode(raw)
        if isinstance(message, Stop):
            break
        if isinstance(message, Reform):
            world.reform()
        elif isinstance(message, RunCase):
            world.control.set(f"report/{number}/{world.rank}", encode(world.run_share(message)).decode())
        else:
            raise ProtocolError(f"rank {world.rank} cannot act on {message!r}: rank 0 sends it no such message")
        number += 1
    world.shut_down()
    return 0
