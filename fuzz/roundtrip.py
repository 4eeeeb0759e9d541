"""One rank's part of one case: build, train, save, rebuild on the load side, load, judge.

Every rank of the pool calls ``run_case`` with the same Case. Ranks ``0..n-1``
form the save side's group (n = ``case.save.world_size``); ranks ``0..m-1`` the
load side's. Ranks outside a side skip it; one world barrier between save and
load is the only synchronisation the fuzzer adds (the load must see a finished
checkpoint). Rank 0 belongs to both sides, so it holds the gathered saved and
loaded state and runs the oracles.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from shardfuzz.build import build_module, build_optimizer, shard
from shardfuzz.case import FSDP2, Case, Side
from shardfuzz.oracles import compare_state
from shardfuzz.targets import CheckpointTarget
from shardfuzz.verdict import Mismatch

__all__ = ["RankContext", "run_case"]


class RankContext:
    """This rank's place in the world, its cached prefix groups and meshes, and the phase it is in."""

    def __init__(self, rank: int, world_size: int, on_phase=None):
        self.rank = rank
        self.world_size = world_size
        self.on_phase = on_phase  # called with each phase name (the pool shows it for a crashed rank)
        self.phase = "idle"
        self.timings: dict[str, float] = {}
        self._groups: dict[int, Any] = {}
        self._meshes: dict[int, Any] = {}

    def create_groups(self) -> None:
        """Every prefix group ``[0..n-1]``; collective on the world, so all ranks call it once."""
        for n in range(1, self.world_size):
            self._groups[n] = dist.new_group(list(range(n)))
        self._groups[self.world_size] = dist.group.WORLD

    def group(self, n: int):
        return self._groups[n]

    def mesh(self, n: int):
        if n not in self._meshes:
            from torch.distributed.device_mesh import DeviceMesh

            self._meshes[n] = DeviceMesh.from_group(self._groups[n], "cpu")
        return self._meshes[n]

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self.phase != "idle":
            self.timings[self.phase] = self.timings.get(self.phase, 0.0) + now - self._since
        self.phase, self._since = phase, now
        if self.on_phase is not None:
            self.on_phase(phase)


def run_case(case: Case, ctx: RankContext, target: CheckpointTarget, checkpoint_dir: str) -> list[Mismatch]:
    """Run this rank's share of ``case``; return the oracles' mismatches (rank 0 only)."""
    ctx.timings = {}
    expected = None
    if ctx.rank < case.save.world_size:
        ctx.enter("build-save")
        model, optim = _build_side(case, case.save, ctx, seed=case.seed)
        ctx.enter("train")
        _train(case, model, optim, rank=ctx.rank)
        ctx.enter("gather-saved")
        expected = _gather_full(model, optim)
        ctx.enter("save")
        state = _side_state_dict(case, case.save, model, optim)
        target.save(state, checkpoint_id=checkpoint_dir, process_group=ctx.group(case.save.world_size))
        del model, optim, state
    ctx.enter("barrier")
    dist.barrier()
    mismatches: list[Mismatch] = []
    if ctx.rank < case.load.world_size:
        ctx.enter("build-load")
        model, optim = _build_side(case, case.load, ctx, seed=case.seed + 1)
        ctx.enter("load")
        state = _side_state_dict(case, case.load, model, optim)
        target.load(state, checkpoint_id=checkpoint_dir, process_group=ctx.group(case.load.world_size))
        _set_side_state_dict(case, case.load, model, optim, state)
        ctx.enter("gather-loaded")
        actual = _gather_full(model, optim)
        if ctx.rank == 0:
            ctx.enter("compare")
            mismatches = compare_state(expected, actual, rank=ctx.rank)
    ctx.enter("idle")
    return mismatches


def _build_side(case: Case, side: Side, ctx: RankContext, *, seed: int):
    n = side.world_size
    module = build_module(case.model, seed=seed)
    mesh = ctx.mesh(n) if isinstance(side.engine, FSDP2) else None  # FSDP1 shards on the group itself
    model = shard(module, side, group=ctx.group(n), mesh=mesh)
    return model, build_optimizer(case.optimizer, model.parameters())


def _train(case: Case, model, optim, *, rank: int) -> None:
    """``case.steps`` optimizer steps on data seeded by (seed, step, rank)."""
    generator = torch.Generator()
    for step in range(case.steps):
        generator.manual_seed(case.seed * 1_000_003 + step * 101 + rank)
        x = torch.randn(case.batch_size, case.model.input_width, generator=generator)
        model(x).square().mean().backward()
        optim.step()
        optim.zero_grad()


def _options(case: Case, side: Side, **overrides):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    kwargs = dict(
        full_state_dict=side.state_dict == "full",
        flatten_optimizer_state_dict=case.flatten_optimizer_state_dict,
    )
    kwargs.update(overrides)
    return StateDictOptions(**kwargs)


def _side_state_dict(case: Case, side: Side, model, optim) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optim, options=_options(case, side))
    return {"model": model_sd, "optim": optim_sd}


def _set_side_state_dict(case: Case, side: Side, model, optim, state) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(case, side))


def _gather_full(model, optim) -> dict[str, Any]:
    """Full, flat, engine-independent state: ``model.<fqn>`` and ``optim.<flat key>``.

    ``cpu_offload`` would keep the gather on rank 0 only, but FSDP1 crashes with it
    on CPU ranks (see corpus), so every rank of the side gathers and only rank 0 keeps it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(
        model, optim, options=StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    )
    flat = {f"model.{k}": _plain(v) for k, v in model_sd.items()}
    flat.update({f"optim.{k}": _plain(v) for k, v in optim_sd.items()})
    return flat


def _plain(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
