"""Faults injected into an object-level target's path: the self-test's mutants for a framework.

``--target accelerate+StepCountersReset`` runs accelerate's real checkpoint code with one fault
around it, as a bug in the framework (or in the trainer code between it and the objects) would
put it there: state not restored after the framework's load, or changed on its way into the
framework's save. ``shardfuzz selftest --target NAME`` fuzzes each fault in turn and reports which
the oracles kill, as it does for the state-dict mutants of ``mutants.py``.

Each fault works on the rank-local objects (a DTensor's local shard, FSDP1's flat parameters), as
a real bug does; the expected oracle is the one that should see it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from shardfuzz.case import BatchNorm, Linear, Model, Sequential
from shardfuzz.targets.protocol import framework_name, support_of

__all__ = ["OBJECT_FAULTS", "with_fault"]


def _local_parameters(model) -> Iterator[torch.Tensor]:
    """Each floating-point parameter's rank-local values (the local shard of a DTensor), not empty."""
    for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        local = param.to_local() if hasattr(param, "to_local") else param
        if local.is_floating_point() and local.numel() > 0:
            yield local


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _optimizer_tensors(optim, names: tuple[str, ...]) -> dict[tuple[int, str], torch.Tensor]:
    """The optimizer's state tensors of these kinds, keyed by (parameter position, name): a load
    replaces the tensor objects, so a fault finds them again by key."""
    params = [p for group in optim.param_groups for p in group["params"]]
    # DeepSpeed's ZeRO 3 puts each flat partition in its param group only while it steps it: between steps
    # its groups hold no parameters, and its state is keyed by the partitions it keeps itself.
    params = params or list(optim.state)
    return {
        (i, name): value
        for i, param in enumerate(params)
        for name, value in sorted(optim.state.get(param, {}).items())
        if name in names and isinstance(value, torch.Tensor)
    }


def _restore(kept: dict, now: dict) -> None:
    """Copy the kept values back into the tensors now under the same keys."""
    with torch.no_grad():
        for key, saved in kept.items():
            if key in now:
                _local(now[key]).copy_(saved)


def _clones(tensors: dict) -> dict:
    return {key: _local(tensor).clone() for key, tensor in tensors.items()}


class _Fault:
    """An object-level target with a fault around the wrapped one's calls (``support`` and
    ``framework`` are the wrapped target's: the fault changes values, not what can run)."""

    expected_oracle = "complete-state"
    #: The model the self-test fuzzes this fault on, where drawn trees seldom hold what it changes; None: drawn.
    exposing_model: Model | None = None
    #: Whether what ``kept`` finds after the load and did not before (a fresh DeepSpeed engine makes its optimizer
    #: state at the first step or the load) starts from zero, as a fresh optimizer's would.
    zeroes_what_was_not_kept = False

    def __init__(self, inner):
        self.inner = inner
        self.support = support_of(inner)
        self.framework = framework_name(inner)

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        self.inner.save_objects(model, optim, side=side, checkpoint_id=checkpoint_id, process_group=process_group)

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        kept = _clones(self.kept(model, optim))
        self.inner.load_objects(
            model, optim, side=side, saved_by=saved_by, checkpoint_id=checkpoint_id, process_group=process_group
        )
        now = self.kept(model, optim)
        _restore(kept, now)
        if self.zeroes_what_was_not_kept:
            with torch.no_grad():
                for key in now.keys() - kept.keys():
                    _local(now[key]).zero_()
        self.after_load(model, optim, process_group)

    def kept(self, model, optim) -> dict:
        """The tensors (by a key that survives a load) whose pre-load values the fault puts back
        after the framework's load."""
        return {}

    def after_load(self, model, optim, process_group) -> None:
        pass


class PerturbLoadedParameter(_Fault):
    """Bit rot after the framework's load: one element of the last rank's first parameter shard is off by one."""

    def after_load(self, model, optim, process_group):
        if dist.get_rank(process_group) == dist.get_world_size(process_group) - 1:
            local = next(_local_parameters(model), None)
            if local is not None:
                with torch.no_grad():
                    local.view(-1)[0] += 1


class FirstMomentsNotLoaded(_Fault):
    """The framework's load skips part of the optimizer state: momentum buffers / ``exp_avg`` keep
    their pre-load values, and where the optimizer held none before the load (a fresh DeepSpeed engine
    makes its state at the first step or the load), start from zero as a fresh optimizer's would."""

    zeroes_what_was_not_kept = True

    def kept(self, model, optim):
        return _optimizer_tensors(optim, ("momentum_buffer", "exp_avg", "square_avg", "sum"))


class StepCountersReset(_Fault):
    """The optimizer's ``step`` counters restart from 0 after the framework's load."""

    def after_load(self, model, optim, process_group):
        with torch.no_grad():
            for step in _optimizer_tensors(optim, ("step",)).values():
                _local(step).zero_()


class HyperparametersNotRestored(_Fault):
    """The optimizer's param-group hyperparameters (lr, momentum, betas) keep the new run's values."""

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        kept = [{k: v for k, v in group.items() if k != "params"} for group in optim.param_groups]
        super().load_objects(
            model, optim, side=side, saved_by=saved_by, checkpoint_id=checkpoint_id, process_group=process_group
        )
        for group, values in zip(optim.param_groups, kept):
            group.update(values)


class BuffersNotLoaded(_Fault):
    """The framework restores parameters only: buffers (BatchNorm's running statistics) keep their init.

    Only a model whose buffers training moves shows it, and drawn trees hold a BatchNorm in about 1 draw in 25 (the
    deepspeed target's, measured: 12 of 300), so a self-test of 240 s (91 cases) missed it: its self-test fuzzes
    everything else on a model of one."""

    exposing_model = Model(3, Sequential([BatchNorm(), Linear(2)]))

    def kept(self, model, optim):
        return dict(model.named_buffers())


class DowncastOnSave(_Fault):
    """Parameters pass through bfloat16 on their way into the framework's save (the live model keeps
    its own values afterwards)."""

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        locals_ = dict(enumerate(_local_parameters(model)))
        kept = _clones(locals_)
        with torch.no_grad():
            for local in locals_.values():
                local.copy_(local.to(torch.bfloat16).to(local.dtype))
        try:
            super().save_objects(model, optim, side=side, checkpoint_id=checkpoint_id, process_group=process_group)
        finally:
            _restore(kept, locals_)


#: fault name -> the oracle expected to kill it.
OBJECT_FAULTS: dict[str, type[_Fault]] = {
    cls.__name__: cls
    for cls in (
        PerturbLoadedParameter,
        FirstMomentsNotLoaded,
        StepCountersReset,
        HyperparametersNotRestored,
        BuffersNotLoaded,
        DowncastOnSave,
    )
}


def with_fault(target, fault: str, *, spec: str):
    """``target`` (an object-level target) with the named fault injected into its path."""
    from shardfuzz.targets.protocol import ObjectTarget

    if fault not in OBJECT_FAULTS:
        raise ValueError(f"target {spec!r}: no such fault {fault!r}; the faults are {sorted(OBJECT_FAULTS)}")
    if not isinstance(target, ObjectTarget):
        raise ValueError(
            f"target {spec!r}: faults wrap an object-level target (save_objects/load_objects); "
            f"{type(target).__name__} is a state-dict target (use the mutants of shardfuzz.targets.mutants)"
        )
    return OBJECT_FAULTS[fault](target)
