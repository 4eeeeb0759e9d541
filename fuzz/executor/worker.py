"""One rank's loop: join the process group once, then receive Cases and send back reports.

The messages (``executor.messages``) go over a ``multiprocessing`` pipe: ``RunCase`` in,
one ``CaseReport`` out per case; ``Reset`` re-forms the process group; ``Stop`` ends the loop.
Any ``BaseException`` raised by the case (DCP's ``CheckpointException`` is one)
becomes a ``RankError`` in the report; only the pool decides what happens next.

What the pool needs when a rank dies or hangs, the rank leaves where the pool can
read it without the rank's help: its stdout and stderr go to ``log_path`` (so a
segfault's faulthandler trace lands there), SIGUSR1 dumps every thread's Python
stack there, and the current phase is written into the shared ``phase`` buffer.
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

from shardfuzz.executor.messages import CaseReport, Failed, ProtocolError, Ready, Reset, RunCase, Stop, decode, encode

__all__ = ["main", "run_share", "warm_up"]


def main(
    rank: int,
    world_size: int,
    store_path: str,
    conn,
    target_spec: str,
    log_path: str | None = None,
    phase=None,
    device: str = "cpu",
    environ: dict[str, str] | None = None,
) -> None:
    # Forked from a forkserver (``environ`` given): the pool's environment as it is now, not the server's.
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _settle_in(log_path)

    import torch

    from shardfuzz.targets import resolve_target

    torch.set_num_threads(1)
    _tqdm_without_a_semaphore()
    world = _World(rank, world_size, conn, phase, _backend(device, rank))
    try:
        target = resolve_target(target_spec)
    except BaseException as exc:
        world.report_failure(exc)
        return
    ctx = world.join(store_path, first=True)
    if ctx is not None:
        _serve(world, ctx, target)
    world.leave()
    if environ is not None:  # a forked process ends with os._exit: run the exit handlers a spawned one would
        atexit._run_exitfuncs()


def _settle_in(log_path: str | None) -> None:
    """A rank process's surroundings: it dies with the pool, ignores Ctrl-C (the pool decides what it means),
    writes to its log, dumps its stacks on SIGUSR1 or a crash, and keeps torch's warnings quiet."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path is not None:
        _redirect_output(log_path)
    faulthandler.enable()
    if hasattr(faulthandler, "register"):  # not on Windows
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    warnings.simplefilter("ignore")
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)


def _backend(device: str, rank: int) -> str:
    """gloo; with CUDA sides, gloo for CPU tensors and NCCL for CUDA ones, this rank on GPU ``rank``. Ranks past
    the GPU count never run a CUDA side (the pool answers such a case unsupported)."""
    if device != "cuda":
        return "gloo"
    import torch

    if rank < torch.cuda.device_count():
        torch.cuda.set_device(rank)
    return "cpu:gloo,cuda:nccl"


class _World:
    """This rank's place in the pool: the process group it joins (again after a failed case), the phase it
    publishes for the pool's hang reports, and what it tells the pool over ``conn``."""

    def __init__(self, rank: int, world_size: int, conn, phase, backend: str):
        self.rank, self.world_size, self.conn, self.phase, self.backend = rank, world_size, conn, phase, backend

    def publish_phase(self, name: str) -> None:
        if self.phase is not None:
            self.phase.value = name.encode()[: len(self.phase) - 1]

    def report_failure(self, exc: BaseException) -> None:
        self.conn.send_bytes(encode(Failed(self.rank, _format(exc))))

    def join(self, store: str, first: bool = False):
        """A fresh world and its prefix groups (a ``RankContext``); on failure tell the pool why and return None."""
        import torch.distributed as dist

        from shardfuzz.rank.roundtrip import RankContext

        try:
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group(
                self.backend, init_method=f"file://{store}", rank=self.rank, world_size=self.world_size
            )
            ctx = RankContext(self.rank, self.world_size, on_phase=self.publish_phase)
            ctx.create_groups()
            if first:
                warm_up(ctx, os.path.join(os.path.dirname(store), "warm-up"))
        except BaseException as exc:
            self.report_failure(exc)
            return None
        self.conn.send_bytes(encode(Ready(self.rank)))
        return ctx

    def leave(self) -> None:
        import torch.distributed as dist

        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except BaseException:
            pass


def _serve(world: _World, ctx, target) -> None:
    """Act on the pool's messages until it says stop or goes away: run each case's share, re-form after a reset."""
    while True:
        try:
            message = decode(world.conn.recv_bytes())
        except EOFError:  # the pool went away
            return
        if isinstance(message, Stop):
            world.publish_phase("teardown")
            return
        if isinstance(message, Reset):  # after a failed case: same processes, new process group
            world.publish_phase("reset")
            ctx = world.join(message.store)
            if ctx is None:
                return
        elif isinstance(message, RunCase):
            world.conn.send_bytes(encode(run_share(message, ctx, target)))
        else:
            raise ProtocolError(f"rank {world.rank} cannot act on {message!r}: it is not sent to a pool's rank")


def run_share(order: RunCase, ctx, target) -> CaseReport:
    """Run this rank's share of the case ``order`` names; its report (a ``RankReport``, unstructured).

    Any ``BaseException`` (DCP's ``CheckpointException`` is one) becomes the report's error.
    """
    from shardfuzz.case import from_dict
    from shardfuzz.rank.roundtrip import run_case
    from shardfuzz.verdict import RankError, RankReport, converter

    error = None
    mismatches = []
    try:
        mismatches = run_case(from_dict(order.case), ctx, target, order.checkpoint_dir, order.phase)
    except BaseException as exc:
        error = RankError(ctx.rank, ctx.phase, type(exc).__name__, str(exc), traceback.format_exc())
        ctx.enter("idle")
    return CaseReport(
        converter.unstructure(RankReport(ctx.rank, tuple(mismatches), error, dict(ctx.timings), tuple(ctx.unchanged)))
    )


def warm_up(ctx, checkpoint_dir: str) -> None:
    """One small correct round-trip with plain DCP, before the rank says it is ready.

    torch initialises much lazily (DCP's planners, FSDP's hooks, DTensor's
    dispatch): the first case on a fresh rank takes seconds, later ones tens of
    milliseconds. Paying that here keeps per-case deadlines and timings honest.
    """
    from shardfuzz.capabilities import capabilities
    from shardfuzz.case import FSDP1, FSDP2, Adam, Case, Linear, Model, Sequential, Side
    from shardfuzz.rank.roundtrip import run_case
    from shardfuzz.targets import DcpTarget

    sharded: dict[str, FSDP1 | FSDP2] = {"fsdp1": FSDP1(), "fsdp2": FSDP2()}
    engines = [sharded[name] for name in capabilities().engines if name in ("fsdp1", "fsdp2")]
    if not engines:
        return
    n = ctx.world_size
    case = Case(
        # Widths that split evenly: an older torch's FSDP1 fails on uneven shards (torch 2.4: "Only single
        # local shard is supported"), and the warm-up must start every torch the fuzzer takes.
        model=Model(2, Sequential([Linear(n), Linear(n)])),
        save=Side(engines[0], (n,)),
        load=Side(engines[-1], (n,)),
        optimizer=Adam(),
        steps=1,
    )
    run_case(case, ctx, DcpTarget(), checkpoint_dir)
    ctx.timings = {}


def _redirect_output(path: str) -> None:
    """Point fds 1 and 2 at ``path`` (append mode: the pool may truncate it between cases)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _tqdm_without_a_semaphore() -> None:
    """Give tqdm a thread lock before anything draws a bar (``torch.fx.Interpreter`` draws a hidden one).

    tqdm's own lock holds a named semaphore, for bars shared between processes, which a rank never draws.
    A rank that the pool terminates inside a case cannot unlink it, and Python's resource tracker, which
    the ranks share with the pool's process (``spawn`` hands it down), reported it at every campaign's
    exit: "There appear to be N leaked semaphore objects to clean up at shutdown".
    """
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no types
    except ImportError:  # torch draws no bars then
        return
    tqdm.set_lock(threading.RLock())


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this rank when the pool's process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except OSError:
        pass
