"""Mutants that only a training-loop pattern exposes (``Case.loop``): each is right for a case that takes its state
dicts fresh, saves once, loads strictly and runs on groups that hold global rank 0, and wrong where a loop holds a
state dict, resumes twice, loads leniently, adds a param group after the load, hands save and load a group
without global rank 0 or saves again before the first save is waited for. They join ``mutants.CATALOGUE``, so ``shardfuzz selftest`` shows that each pattern reaches
what the others cannot."""

from __future__ import annotations

import os

import torch

from shardfuzz.targets._state_access import _group_values, _model_locals, _optim_entries, _set_group_values
from shardfuzz.targets.dcp import DcpTarget

__all__ = ["LOOP_CATALOGUE"]


class ParametersReplacedAtFirstForward(DcpTarget):
    """Wrapping code that gives every parameter new storage at the model's first forward (as a lazy
    initialisation, or a ``module.to(...)`` that makes new tensors, does): training and a state dict taken at save
    time are right, but a model state dict held from before the first forward still points at the initial weights,
    so a trainer that holds one saves those. Only a held save-side state dict (``Loop.save_held``) sees it.
    Plain-tensor sides only (DDP, a plain module): a DTensor's storage belongs to its engine."""

    def shard(self, module, side, *, group, mesh, default):
        from shardfuzz.case import DDP, Unsharded

        model = default(module, side, group=group, mesh=mesh)
        if not isinstance(side.engine, (DDP, Unsharded)):
            return model

        def renew(_module, _inputs):
            handle.remove()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.data = parameter.data.clone()

        handle = model.register_forward_pre_hook(renew)
        return model


class LoadedIntoNewTensors(DcpTarget):
    """A loader that reads each model tensor into a new tensor and puts it in the state dict in place of the one it
    was handed (instead of copying into it). ``set_state_dict`` still loads the model right; but a model state dict
    the trainer holds (``Loop.load_held``) now points at those new tensors, not the live parameters, so its next
    save (``Loop.resumes`` 2) writes the values as loaded, not as trained since."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        held = state_dict["model"]
        fresh = {key: value.detach().clone() if torch.is_tensor(value) else value for key, value in held.items()}
        state_dict["model"] = fresh
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        held.update(fresh)
        state_dict["model"] = held


class MissingKeysZeroed(DcpTarget):
    """A lenient loader that fills what the checkpoint holds and sets what it lacks to zeros, where a lenient load
    (``strict=False``) must leave those as they were: a fine-tune's new head starts from zeros instead of its own
    initialisation. Only a lenient load (``Loop.lenient``) has keys the checkpoint lacks."""

    def load_partial(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed.checkpoint as dcp

        super().load_partial(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        stored = dcp.FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
        with torch.no_grad():
            for key, local in _model_locals(state_dict):
                if f"model.{key}" not in stored:
                    local.zero_()


class ResumedRunSavesStaleOptimizer(DcpTarget):
    """A checkpointer that keeps the optimizer state it restored and, once it has resumed a run, writes that copy into
    the run's folder instead of the live state (a cache meant to spare a gather): a first save and a first load are
    right, the second checkpoint of a run that resumes twice (``Loop.resumes`` 2) holds the optimizer as it was
    loaded, not as trained since."""

    _resumed_from: str | None = None
    _restored: dict | None = None

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        self._resumed_from, self._restored = os.path.abspath(checkpoint_id), _copied(state_dict["optim"])

    def save(self, state_dict, *, checkpoint_id, process_group):
        run = self._resumed_from
        if run is not None and os.path.abspath(checkpoint_id).startswith(run + os.sep):
            state_dict = {**state_dict, "optim": self._restored}
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class StepCountsUnified(DcpTarget):
    """A loader that keeps one step count for the whole optimizer (as a loader that stores it once per param group
    does): after the load, every parameter's ``step`` is the largest one loaded. Right while every parameter steps
    together; wrong where a module got no gradient at the first step (``Loop.gradless`` ``first-step``), so its
    state started a step late and Adam's bias correction for it runs one step behind."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        entries = _optim_entries(state_dict["optim"])
        steps = [(value, container, key) for _, name, value, container, key in entries if name == "step"]
        if not steps:
            return
        largest = max(float(value) for value, _, _ in steps)
        for value, container, key in steps:
            if torch.is_tensor(value):
                value.fill_(largest)
            else:
                container[key] = largest


class EmptyGroupsKeepTheirOwnHyperparameters(DcpTarget):
    """A loader that matches saved param groups to live ones by the parameters they hold: a group with none matches
    nothing, so it keeps the load side's own hyperparameters (its learning rate, its betas) instead of the saved
    ones. Only an optimizer with an empty param group (``Loop.empty_group``) has such a group; the flattened
    optimizer form has no room for one at all, so only the nested form shows it."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        groups = state_dict["optim"].get("param_groups")
        own = [dict(group) for group in groups] if isinstance(groups, list) else None
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        for group, before in zip(state_dict["optim"].get("param_groups") or [], own or []):
            if not group.get("params"):
                group.update(before)


class CompletionMarkedByGlobalRankZero(DcpTarget):
    """A checkpointer that marks a finished checkpoint with a file written where ``dist.get_rank() == 0`` (the world's
    rank 0, as trainers write their ``latest`` pointer or their run state), and whose load takes a checkpoint without
    that mark for an unfinished one and skips it, leaving the model and optimizer as built (a resume that silently
    starts over). Right wherever the saving group holds global rank 0; a group without it (``Loop.ranks_from``)
    writes no mark, so nothing is loaded."""

    MARK = "COMPLETE"

    def save(self, state_dict, *, checkpoint_id, process_group):
        import torch.distributed as dist

        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        if dist.get_rank() == 0:
            with open(os.path.join(checkpoint_id, self.MARK), "w"):
                pass

    def load(self, state_dict, *, checkpoint_id, process_group):
        if os.path.exists(os.path.join(checkpoint_id, self.MARK)):
            super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class ParamGroupsCachedAtFirstSave(DcpTarget):
    """A checkpointer that keeps the param groups' hyperparameters from a run's first save and, on the run's later
    saves, writes them for every group it already knew and the first group's for any other (sparing a walk over
    groups that, it assumed, never change in number): right while the optimizer keeps the groups it was built with;
    a group added after the load (``Loop.late_group``) reaches the second checkpoint of a run that resumes twice
    with the first group's learning rate, not its own."""

    _run: str | None = None
    _known: dict | None = None

    def save(self, state_dict, *, checkpoint_id, process_group):
        run, optim = os.path.abspath(checkpoint_id), state_dict.get("optim")
        if isinstance(optim, dict):
            if self._run is not None and run.startswith(self._run + os.sep):
                _set_group_values(optim, _as_first_seen(_group_values(optim), self._known or {}))
            else:
                self._run, self._known = run, dict(_group_values(optim))
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class StagingBuffersReusedInFlight(DcpTarget):
    """An asynchronous checkpointer that stages each save into one set of buffers it keeps between saves (sparing an
    allocation per checkpoint, as a pinned-memory staging cache does) and writes them in the background, waited for
    at ``finish_save``: right while one save is in flight at a time; a second save started before the first is
    waited for (``Loop.second_save``) stages into the buffers the first is still writing, so the first checkpoint
    holds the second's values."""

    def __init__(self):
        self._staged = None
        self._pending: list = []

    def save(self, state_dict, *, checkpoint_id, process_group):
        self._staged = _staged_into(self._staged, state_dict)
        self._pending.append((self._staged, checkpoint_id, process_group))

    def finish_save(self):
        pending, self._pending = self._pending, []
        for staged, checkpoint_id, process_group in pending:
            super().save(staged, checkpoint_id=checkpoint_id, process_group=process_group)


def _staged_into(staged, value):
    """``value`` copied into the tensors of ``staged`` (an earlier staging of the same structure) where they fit,
    else into new ones; dicts and lists rebuilt, other values (a ShardedTensor too) as they are."""
    if isinstance(value, dict):
        old = staged if isinstance(staged, dict) else {}
        return {key: _staged_into(old.get(key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        old = staged if isinstance(staged, (list, tuple)) and len(staged) == len(value) else [None] * len(value)
        return type(value)(_staged_into(o, item) for o, item in zip(old, value))
    if not torch.is_tensor(value) or type(value).__name__ == "ShardedTensor":
        return value
    if type(staged) is type(value) and getattr(staged, "placements", None) == getattr(value, "placements", None):
        buffer, local = (getattr(t, "to_local", lambda t=t: t)() for t in (staged, value))
        if buffer.shape == local.shape and buffer.dtype == local.dtype and type(buffer) is torch.Tensor:
            with torch.no_grad():
                buffer.copy_(local)
            return staged
    try:
        return value.detach().clone()
    except (NotImplementedError, RuntimeError):  # a tensor subclass that cannot be copied (torchao's low-bit state)
        return value


def _as_first_seen(values: dict, known: dict) -> dict:
    """``values`` with each key ``known`` did not hold set to the first known group's value of that hyperparameter
    (keys: ``(group index, name)`` in the nested form, ``param_groups.<fqn>.<name>`` in the flattened one)."""
    first: dict = {}
    for key in sorted(known, key=str):
        first.setdefault(_hyperparameter(key), known[key])
    return {key: first[_hyperparameter(key)] for key in values if key not in known and _hyperparameter(key) in first}


def _hyperparameter(key) -> str:
    """The hyperparameter's name in a ``_group_values`` key of either form."""
    return key[1] if isinstance(key, tuple) else key.rpartition(".")[2]


def _copied(value):
    """``value`` with every tensor in it cloned (dicts and lists rebuilt)."""
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value


#: name -> the oracle expected to kill it.
LOOP_CATALOGUE: dict[str, str] = {
    "ParametersReplacedAtFirstForward": "complete-state",
    "LoadedIntoNewTensors": "resumed-state",
    "MissingKeysZeroed": "complete-state",
    "ResumedRunSavesStaleOptimizer": "resumed-state",
    "StepCountsUnified": "complete-state",
    "EmptyGroupsKeepTheirOwnHyperparameters": "complete-state",
    "CompletionMarkedByGlobalRankZero": "complete-state",
    "ParamGroupsCachedAtFirstSave": "resumed-state",
    "StagingBuffersReusedInFlight": "complete-state",
}
