"""CPU time of a command and everything it starts, by what each process is, sampled from ``/proc`` (Linux).

A sampler thread reads every process's cumulative CPU (user + system) every ``every`` seconds and keeps the
last value it saw of each; a process that lives less than one interval, or the CPU a process spends after
its last sample, is missed (a warm pool's ranks, Ray's daemons and the campaigns live for the whole run, so
what is missed is small). Processes that were running before the sampler started (the machine's own) are
left out; the machine-wide busy time from ``/proc/stat`` is kept beside the total as a check.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

__all__ = ["CpuSampler", "kind_of"]

_TICKS = os.sysconf("SC_CLK_TCK")


def kind_of(cmdline: str, *, command_pid: int, pid: int) -> str:
    """Which part of a shardfuzz run a process is, from its command line."""
    if pid == command_pid:
        return "driver (the command)"
    if "multiprocessing" in cmdline or "forkserver" in cmdline:
        return "ranks (and their forkserver)"
    if cmdline.startswith("ray::"):
        actor = cmdline.split()[0][len("ray::") :].split(".")[0]  # "ray::FleetCampaign.run" while it runs a call
        return {"FleetCampaign": "campaigns", "Collector": "collector"}.get(actor, "Ray's own processes")
    if "shardfuzz" in cmdline and " run " in f" {cmdline} ":
        return "campaigns"
    if "/ray/" in cmdline:
        return "Ray's own processes"
    return f"other: {cmdline[:60]}"


def _busy() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS  # all but idle and iowait


def _processes() -> dict[int, tuple[float, str]]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / _TICKS, cmdline)
    return found


class CpuSampler:
    """``with CpuSampler() as cpu: ...; cpu.attach(pid)``; then ``cpu.by_kind()`` and ``cpu.machine``."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.before = set(_processes())
        self.seen: dict[int, tuple[float, str]] = {}
        self.command_pid = -1
        self.machine = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def attach(self, pid: int) -> None:
        self.command_pid = pid

    def __enter__(self) -> CpuSampler:
        self._start = _busy()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.machine = _busy() - self._start

    def _sample(self) -> None:
        while True:
            for pid, (cpu, cmdline) in _processes().items():
                if pid not in self.before and pid != os.getpid():
                    self.seen[pid] = (cpu, cmdline or self.seen.get(pid, (0.0, ""))[1])
            if self._done.wait(self.every):
                return

    def by_kind(self) -> dict[str, float]:
        totals: Counter = Counter()
        for pid, (cpu, cmdline) in self.seen.items():
            totals[kind_of(cmdline, command_pid=self.command_pid, pid=pid)] += cpu
        return {kind: round(seconds, 1) for kind, seconds in totals.most_common()}
