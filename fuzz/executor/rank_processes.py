"""A warm pool's rank processes as processes: forked from a forkserver (or spawned), stopped in stages, and how each one ended.

Shutdown goes in stages, as HypoFuzz's worker hub does: ask (a ``Stop`` message),
join with a deadline, terminate, kill.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable

from shardfuzz.executor.interpreters import Interpreter, spawning_in
from shardfuzz.executor.messages import Stop, encode

__all__ = ["how_it_ended", "spawn_ranks", "stop_in_stages"]

#: The bytes of a rank's phase buffer (``worker.main`` publishes its phase there).
_PHASE_BYTES = 32


def spawn_ranks(
    world_size: int,
    *,
    store: str,
    target: str,
    device: str,
    log_of: Callable[[int], str],
    interpreter: Interpreter | None,
) -> tuple[list, list, list]:
    """Start ``world_size`` ranks (``worker.main``) in ``interpreter``, joining one world on the file ``store``.

    Returns their processes, the pool's ends of their pipes and their phase buffers, by rank. If one
    cannot be started, those already started are stopped before the error goes on.
    """
    from shardfuzz.executor import worker

    context = _context(interpreter)
    procs: list = []
    conns: list = []
    phases: list = []
    try:
        with _children_allowed(), spawning_in(interpreter), _one_thread_each():
            environ = dict(os.environ) if context.get_start_method() == "forkserver" else None  # see ``_context``
            for rank in range(world_size):
                parent_end, child_end = context.Pipe()
                phase = context.RawArray("c", _PHASE_BYTES)
                proc = context.Process(
                    target=worker.main,
                    args=(rank, world_size, store, child_end, target, log_of(rank), phase, device, environ),
                    name=f"shardfuzz-rank-{rank}",
                    daemon=True,
                )
                proc.start()
                child_end.close()
                procs.append(proc)
                conns.append(parent_end)
                phases.append(phase)
    except BaseException:
        stop_in_stages(procs, conns, reads_its_pipe=lambda rank: False)
        raise
    return procs, conns, phases


#: What the forkserver imports once, so that each rank forked from it starts with them imported.
_PRELOAD = ["torch", "torch.distributed", "shardfuzz.executor.worker"]


def _context(interpreter: Interpreter | None):
    """How the ranks are started: forked from a forkserver that imported torch once, where they run this Python
    (a restart after a crash or a hang then skips torch's import on every rank: seconds on a small machine);
    spawned, where they run another (the forkserver is one per process, in this Python). A forked rank takes
    the pool's environment as it is now (``worker.main``), not the forkserver's from when it started."""
    if interpreter is not None or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def stop_in_stages(procs: list, conns: list, *, reads_its_pipe: Callable[[int], bool]) -> dict[int, int | None]:
    """Stop the ranks and close the pool's ends of their pipes: ask, join with a deadline, terminate, kill.

    A rank that ``reads_its_pipe`` (it is between cases) is asked to stop; one still inside a case
    (stuck, or blocked by a peer that died) cannot read the request, so it is terminated at once instead
    of costing the join's deadline. Returns the exit code of each rank that was asked, as it stood when
    the asked ranks had had their time (None: it had not exited, and was terminated).
    """
    asked = set()
    for rank, (proc, conn) in enumerate(zip(procs, conns)):
        if not proc.is_alive():
            continue
        if not reads_its_pipe(rank):
            proc.terminate()
            continue
        try:
            conn.send_bytes(encode(Stop()))
            asked.add(rank)
        except (OSError, ValueError):
            pass
    _join_all(procs, 5.0)
    codes = {rank: procs[rank].exitcode for rank in sorted(asked)}
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    _join_all(procs, 2.0)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    _join_all(procs, 2.0)
    for conn in conns:
        conn.close()
    return codes


def how_it_ended(exitcode: int | None, *, long: bool = False) -> str:
    """``SIGSEGV`` / ``exit 3`` (``killed by SIGSEGV`` / ``exited with code 3`` when ``long``)."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}" if long else name
    return f"exited with code {exitcode}" if long else f"exit {exitcode}"


@contextlib.contextmanager
def _children_allowed():
    """Let a daemonic process (a HypoFuzz or pytest-xdist worker) start the pool's ranks.

    multiprocessing refuses children to daemonic processes so that none outlive
    it; the ranks already cannot: each asks the kernel to kill it when its parent
    dies (``PR_SET_PDEATHSIG``), and ``stop_in_stages`` stops them.
    """
    config = multiprocessing.current_process()._config
    daemonic = config.get("daemon", False)
    config["daemon"] = False
    try:
        yield
    finally:
        config["daemon"] = daemonic


#: A rank computes on one CPU thread (``worker.main``); OpenMP is told so before torch starts in it.
_RANK_THREADS = {"OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def _one_thread_each():
    """The ranks (and the forkserver they fork from, which imports torch) start with ``_RANK_THREADS`` whatever the
    pool's process has: a Ray actor has ``OMP_NUM_THREADS`` set to its CPUs, and ranks that started with two OpenMP
    threads each ran the same cases about 5% slower on two cores (docs/measurements.md, 2026-12-06)."""
    before = {name: os.environ.get(name) for name in _RANK_THREADS}
    os.environ.update(_RANK_THREADS)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _join_all(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
