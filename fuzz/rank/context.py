"""A rank's place in the pool's world and in the case it runs: its cached groups and meshes, and the phase it is in."""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch.distributed as dist

from shardfuzz.case import Case, ZeRO
from shardfuzz.rank.portable.sharding import device_mesh

__all__ = ["RankContext"]


_GENERATIONS = itertools.count()  # process groups this rank process has joined


class RankContext:
    """This rank's place in the world, its cached groups and meshes, and the phase it is in.

    ``rank`` is the rank within the case: global ranks are counted from the case's ``Loop.ranks_from``, so a side
    on ``n`` ranks runs on the global ranks ``ranks_from .. ranks_from + n - 1`` (its subgroup's ranks ``0..n-1``
    in the same order) and the ranks below ``ranks_from`` come last, outside both sides. ``global_rank`` is the
    process's rank in the world."""

    def __init__(self, rank: int, world_size: int, on_phase=None):
        self.generation = next(_GENERATIONS)  # the same on every rank: each makes its contexts in step
        self.global_rank = rank
        self.rank = rank
        self.first = 0  # the global rank of the case's rank 0
        self.world_size = world_size
        self.on_phase = on_phase  # called with each phase name (the pool shows it for a crashed rank)
        self.phase = "idle"
        self._since = 0.0  # when the phase began (perf_counter)
        self.timings: dict[str, float] = {}
        self.unchanged: list[str] = []  # non-vacuity: keys equal to the saved state before the load
        self._groups: dict[tuple[int, int], Any] = {}  # (first global rank, n) -> the group of n ranks from it
        self._async_groups: dict[tuple[int, int, int], Any] = {}  # the same and a save's number -> an async_save's
        self._meshes: dict[tuple, Any] = {}  # (first global rank, mesh shape, device) -> DeviceMesh
        self._singles: list[Any] = []  # each global rank's group of itself alone (DeepSpeed's model-parallel group)

    def create_groups(self) -> None:
        """Every prefix group ``[0..n-1]``; collective on the world, so all ranks call it once."""
        for n in range(1, self.world_size):
            self._groups[0, n] = dist.new_group(list(range(n)))
        self._groups[0, self.world_size] = dist.group.WORLD

    def begin(self, case: Case, phase: str = "both") -> None:
        """Number this rank within ``case`` (from its ``Loop.ranks_from``) and make the groups and meshes of the
        sides its ``phase`` runs (a half may run on a pool of that side's size only): collective on the whole
        world, so every rank (on a side or not) calls it, in the same order."""
        self.first = case.loop.ranks_from
        self.rank = (self.global_rank - self.first) % self.world_size
        sides = {"both": (case.save, case.load), "save": (case.save,), "load": (case.load,)}[phase]
        for n in sorted({side.world_size for side in sides}):
            if (self.first, n) not in self._groups:
                self._groups[self.first, n] = dist.new_group(list(range(self.first, self.first + n)))
        self.prepare_meshes(sides)
        if phase != "load":
            self.prepare_async_group(case)
        if not self._singles and any(isinstance(side.engine, ZeRO) for side in sides):
            self._singles = [dist.new_group([r]) for r in range(self.world_size)]

    def single_group(self):
        """This rank alone (made by ``begin`` for a case with a ZeRO side): DeepSpeed's model-parallel group."""
        return self._singles[self.global_rank]

    def group(self, n: int):
        """The group of the case's ranks ``0..n-1``."""
        return self._groups[self.first, n]

    def prepare_meshes(self, sides) -> None:
        """Make the 2-D meshes of the case's ``sides`` now: their groups are collective on the whole world,
        so every rank (on a side or not) makes them here, in the same order. Cached."""
        for side in sides:
            key = (self.first, side.mesh_shape, side.device)
            if len(side.mesh_shape) == 2 and key not in self._meshes:
                self._meshes[key] = device_mesh(
                    side.mesh_shape,
                    self.group(side.world_size),
                    rank=self.rank,
                    generation=self.generation,
                    device=side.device,
                    first=self.first,
                )

    def prepare_async_group(self, case: Case) -> None:
        """An async save writes (and runs its collectives) in a thread while the save side trains on:
        it gets a group of its own, as torch recommends, and a second save in flight beside it
        (``Loop.second_save``) another. Collective on the world, like the meshes."""
        n = case.save.world_size
        for which in range(1 + case.loop.second_save if case.saves_async else 0):
            if (self.first, n, which) not in self._async_groups:
                self._async_groups[self.first, n, which] = dist.new_group(list(range(self.first, self.first + n)))

    def checkpoint_group(self, case: Case, *, second: bool = False):
        """The group the save side's checkpoint writer uses (after ``prepare_async_group``); ``second``: for the
        second save of ``Loop.second_save``."""
        n = case.save.world_size
        return self._async_groups[self.first, n, int(second)] if case.saves_async else self.group(n)

    def mesh(self, shape: tuple[int, ...], device: str = "cpu"):
        """The DeviceMesh of a side of this shape on ``device`` (2-D ones come from ``prepare_meshes``)."""
        key = (self.first, shape, device)
        if key not in self._meshes:
            self._meshes[key] = device_mesh(
                shape,
                self.group(shape[0]),
                rank=self.rank,
                generation=self.generation,
                device=device,
                first=self.first,
            )
        return self._meshes[key]

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self.phase != "idle":
            self.timings[self.phase] = self.timings.get(self.phase, 0.0) + now - self._since
        self.phase, self._since = phase, now
        if self.on_phase is not None:
            self.on_phase(phase)
