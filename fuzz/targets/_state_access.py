"""How a mutant reaches into the state a target is handed (the rank-local shard of a DTensor or ShardedTensor,
either optimizer form, the model it loads into): shared by the mutant catalogues and the controls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from shardfuzz.targets.dcp import DcpTarget


class LoadSideKept(DcpTarget):
    """DCP, keeping the module it sharded last as ``loaded_into``: in ``load``, the load side's model (a round-trip
    builds the save side, saves, and then builds the load side and loads into it)."""

    loaded_into: Any = None

    def shard(self, module, side, *, group, mesh, default):
        self.loaded_into = module
        return default(module, side, group=group, mesh=mesh)


def _local(value) -> torch.Tensor | None:
    """The rank-local floating-point tensor behind a DTensor, ShardedTensor or tensor (None if empty)."""
    if hasattr(value, "to_local"):
        value = value.to_local()
    elif hasattr(value, "local_shards"):
        shards = value.local_shards()
        value = shards[0].tensor if shards else None
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        return value
    return None


def _model_locals(state_dict) -> Iterator[tuple[str, torch.Tensor]]:
    for key in sorted(state_dict["model"]):
        local = _local(state_dict["model"][key])
        if local is not None:
            yield key, local


def _optim_entries(optim: dict) -> Iterator[tuple[str, str, Any, dict, str]]:
    """``(fqn, name, value, container, key)`` for every per-parameter optimizer state entry."""
    if isinstance(optim.get("state"), dict):  # nested: {"state": {fqn: {name: value}}}
        for fqn in sorted(optim["state"]):
            for name in sorted(optim["state"][fqn]):
                yield fqn, name, optim["state"][fqn][name], optim["state"][fqn], name
    else:  # flattened: {"state.<fqn>.<name>": value}
        for key in sorted(k for k in optim if k.startswith("state.")):
            fqn, _, name = key[len("state.") :].rpartition(".")
            yield fqn, name, optim[key], optim, key


def _group_values(optim: dict) -> dict:
    """Every param-group hyperparameter, keyed so it can be written back."""
    if isinstance(optim.get("param_groups"), list):
        return {(i, k): v for i, group in enumerate(optim["param_groups"]) for k, v in group.items() if k != "params"}
    return {k: v for k, v in optim.items() if k.startswith("param_groups.")}


def _set_group_values(optim: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(key, tuple):
            optim["param_groups"][key[0]][key[1]] = value
        else:
            optim[key] = value


def _last_rank(process_group) -> bool:
    return dist.get_rank(process_group) == dist.get_world_size(process_group) - 1


def _snapshot(tensors) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(t, t.clone()) for t in tensors]


def _restore(snapshot) -> None:
    with torch.no_grad():
        for tensor, saved in snapshot:
            tensor.copy_(saved)


def _whole(value) -> bool:
    """A plain tensor: not a DTensor or ShardedTensor, so every rank holds all of it."""
    return isinstance(value, torch.Tensor) and not hasattr(value, "to_local") and not hasattr(value, "local_shards")
