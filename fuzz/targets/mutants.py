"""A catalogue of realistic checkpointing bugs, each a ``CheckpointTarget`` that wraps DCP.

``shardfuzz selftest`` fuzzes each one in turn and reports whether the oracles
catch it ("kill" it), how fast, and how small the shrunk case is. They go through
the same public seam as a user's own code (``--target shardfuzz.targets.mutants:Name``),
so a kill here says the oracles would catch the same bug in a user's loader.

Each mutant changes only what a buggy implementation would change; where it
needs the state it is handed, it works on the rank-local shard, as a real
save/load implementation does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from shardfuzz.capabilities import dtensor
from shardfuzz.targets import DcpTarget
from shardfuzz.targets._state_access import (
    LoadSideKept,
    _group_values,
    _last_rank,
    _local,
    _model_locals,
    _optim_entries,
    _restore,
    _set_group_values,
    _snapshot,
    _whole,
)
from shardfuzz.targets.loop_mutants import (  # noqa: F401  (named in CATALOGUE: resolved from here)
    LOOP_CATALOGUE,
    CompletionMarkedByGlobalRankZero,
    EmptyGroupsKeepTheirOwnHyperparameters,
    LoadedIntoNewTensors,
    MissingKeysZeroed,
    ParametersReplacedAtFirstForward,
    ParamGroupsCachedAtFirstSave,
    ResumedRunSavesStaleOptimizer,
    StagingBuffersReusedInFlight,
    StepCountsUnified,
)
from shardfuzz.targets.pipeline_mutants import (  # noqa: F401  (named in CATALOGUE: resolved from here)
    LastStageSavedBeforeItsStep,
    StagePlanByPosition,
)

__all__ = ["CATALOGUE"]


# --- the mutants --------------------------------------------------------------


class PerturbOneLoadedElement(DcpTarget):
    """Bit rot: after a correct load, one element of the last rank's first model shard is off by one."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        if _last_rank(process_group):
            for _, local in _model_locals(state_dict):
                with torch.no_grad():
                    local.view(-1)[0] += 1.0
                return


class DropLastRankShard(DcpTarget):
    """One rank's shard dropped: the last rank of the load group keeps its freshly initialised weights."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        kept = _snapshot(t for _, t in _model_locals(state_dict)) if _last_rank(process_group) else []
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _restore(kept)


class ShiftLastShard(DcpTarget):
    """Off by one in the last shard: the last save rank writes its model shards one element out of place."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        if _last_rank(process_group):
            with torch.no_grad():
                for _, local in _model_locals(state_dict):
                    if local.numel() > 1:
                        local.copy_(local.reshape(-1).roll(1).reshape(local.shape))
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class TransposeShards(DcpTarget):
    """A transposed 2-D shard: each rank writes 2-D model shards in the wrong memory order."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        with torch.no_grad():
            for _, local in _model_locals(state_dict):
                if local.dim() == 2 and min(local.shape) > 1:
                    local.copy_(local.t().contiguous().reshape(local.shape))
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class DowncastOnSave(DcpTarget):
    """A dtype downcast: model shards pass through bfloat16 on the way to disk."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        with torch.no_grad():
            for _, local in _model_locals(state_dict):
                local.copy_(local.to(torch.bfloat16).to(local.dtype))
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class OneKeyNotLoaded(DcpTarget):
    """A silently ignored key: the first model entry keeps its initial value on every rank."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        first = next(iter(_model_locals(state_dict)), None)
        kept = _snapshot([first[1]]) if first else []
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _restore(kept)


class BiasesNotSaved(DcpTarget):
    """Entries not saved (as buffers often are not) and a lenient loader that lets them keep their init."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        kept = {k: v for k, v in state_dict["model"].items() if not k.endswith(".bias")}
        super().save({**state_dict, "model": kept}, checkpoint_id=checkpoint_id, process_group=process_group)

    def load(self, state_dict, *, checkpoint_id, process_group):
        _partial_load(state_dict, checkpoint_id, process_group)


class BuffersNotLoaded(DcpTarget):
    """A loader that restores parameters only: buffers (BatchNorm's running statistics and
    ``num_batches_tracked``) keep the values the fresh model started with."""

    _BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

    def load(self, state_dict, *, checkpoint_id, process_group):
        buffers = [
            v
            for k, v in state_dict["model"].items()
            if k.rsplit(".", 1)[-1] in self._BUFFERS and isinstance(v, torch.Tensor)
        ]
        kept = _snapshot(buffers)
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _restore(kept)


class ReplicasNotLoaded(DcpTarget):
    """A loader that restores replicated state on one rank only: on every rank of the group but
    the first, the values each rank holds whole (buffers, the optimizer's ``step`` counters)
    keep their pre-load values. The gathered state is rank 0's copy, so it looks right."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        kept = []
        if dist.get_rank(process_group) != 0:
            buffers = [v for k, v in state_dict["model"].items() if k.rsplit(".", 1)[-1] in BuffersNotLoaded._BUFFERS]
            steps = [v for _, name, v, _, _ in _optim_entries(state_dict["optim"]) if name == "step"]
            kept = _snapshot(v for v in buffers + steps if _whole(v))
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _restore(kept)


class PartialLoadAllowed(DcpTarget):
    """A lenient loader: keys missing from the checkpoint are skipped instead of raising."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        _partial_load(state_dict, checkpoint_id, process_group)


def _partial_load(state_dict, checkpoint_id, process_group) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    dcp.load(
        state_dict,
        checkpoint_id=checkpoint_id,
        process_group=process_group,
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )


class SwapMomentsBetweenParameters(DcpTarget):
    """Optimizer state mapped to the wrong parameter: two same-shaped moments of one kind are swapped.

    Any per-parameter state tensor but ``step`` (Adam's ``exp_avg``, SGD's
    ``momentum_buffer``, Adagrad's ``sum``, RMSprop's ``square_avg`` ...); the
    first pair on this rank that differs, so that the swap is visible at all.
    """

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        by_kind: dict[str, list[torch.Tensor]] = {}
        for _, name, value, _, _ in _optim_entries(state_dict["optim"]):
            local = _local(value)
            if name != "step" and local is not None and local.dim() > 0:
                by_kind.setdefault(name, []).append(local)
        for moments in by_kind.values():
            for i, a in enumerate(moments):
                for b in moments[i + 1 :]:
                    if a.shape == b.shape and not torch.equal(a, b):
                        with torch.no_grad():
                            saved = a.clone()
                            a.copy_(b)
                            b.copy_(saved)
                        return


class SwapExpAvgAndSq(DcpTarget):
    """Adam's ``exp_avg`` and ``exp_avg_sq`` swapped for every parameter (a key mix-up in a converter)."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        by_fqn: dict[str, dict[str, torch.Tensor]] = {}
        for fqn, name, value, _, _ in _optim_entries(state_dict["optim"]):
            local = _local(value)
            if local is not None:
                by_fqn.setdefault(fqn, {})[name] = local
        with torch.no_grad():
            for moments in by_fqn.values():
                if "exp_avg" in moments and "exp_avg_sq" in moments:
                    saved = moments["exp_avg"].clone()
                    moments["exp_avg"].copy_(moments["exp_avg_sq"])
                    moments["exp_avg_sq"].copy_(saved)


class FirstMomentsNotLoaded(DcpTarget):
    """Part of the optimizer state skipped: momentum buffers / ``exp_avg`` keep their pre-load values."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        kept = _snapshot(
            t
            for t in (
                _local(v)
                for _, name, v, _, _ in _optim_entries(state_dict["optim"])
                if name in ("exp_avg", "momentum_buffer")
            )
            if t is not None
        )
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _restore(kept)


class HyperparametersNotRestored(DcpTarget):
    """Param-group hyperparameters (lr, momentum, betas, eps) are not restored: the new run's stay."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        before = _group_values(state_dict["optim"])
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        _set_group_values(state_dict["optim"], before)


class StepReset(DcpTarget):
    """The optimizer's ``step`` counters restart from 0 after a load."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        for _, name, value, container, key in _optim_entries(state_dict["optim"]):
            if name == "step":
                if isinstance(value, torch.Tensor):
                    with torch.no_grad():
                        value.zero_()
                else:
                    container[key] = 0


class StepTensorsShared(DcpTarget):
    """A loader that deduplicates equal tensors: every parameter's ``step`` becomes one shared tensor.

    The values are right after the load; only the next steps show it (each
    parameter's update bumps the shared counter), so only ``continuation`` sees it.
    """

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        shared = None
        for _, name, value, container, key in _optim_entries(state_dict["optim"]):
            if name == "step" and isinstance(value, torch.Tensor):
                shared = value if shared is None else shared
                container[key] = shared


class ShardOnDimOne(DcpTarget):
    """Wrapping code that shards 2-D parameters on dim 1 instead of dim 0 (a changed placement).

    Uses the optional ``shard`` hook of the target protocol; DCP itself reshards
    correctly, so only the ``layout`` oracle sees it.
    """

    def shard(self, module, side, *, group, mesh, default):
        from shardfuzz.case import FSDP2

        if not isinstance(side.engine, FSDP2):
            return default(module, side, group=group, mesh=mesh)
        Shard = dtensor().Shard

        from shardfuzz.capabilities import fully_shard_fn

        fully_shard = fully_shard_fn()

        def placement(param):
            return Shard(1) if param.dim() == 2 and param.shape[1] > 1 else Shard(0)

        for path in side.wrap_innermost_first:
            fully_shard(
                module.get_submodule(path),
                mesh=mesh,
                shard_placement_fn=placement,
                reshard_after_forward=side.engine.reshard_after_forward,
            )
        fully_shard(
            module, mesh=mesh, shard_placement_fn=placement, reshard_after_forward=side.engine.reshard_after_forward
        )
        return module


class TPStyleSwapped(DcpTarget):
    """Wrapping code that splits the first planned Linear of a tensor-parallel side the other way
    (colwise as rowwise, and back): a TP placement the side did not ask for. DCP reshards the values
    correctly into whatever layout the model has, so the state compares equal and only the ``layout``
    oracle, which checks every DTensor against the side's plan, sees it."""

    def shard(self, module, side, *, group, mesh, default):
        import attrs

        from shardfuzz.case import TP

        engine = side.engine
        linears = [entry for entry in getattr(engine, "plan", ()) if entry[1] in ("colwise", "rowwise")]
        if not isinstance(engine, TP) or not linears:
            return default(module, side, group=group, mesh=mesh)
        path = linears[0][0]
        swapped = [(p, ("rowwise" if s == "colwise" else "colwise") if p == path else s) for p, s in engine.plan]
        return default(module, attrs.evolve(side, engine=attrs.evolve(engine, plan=swapped)), group=group, mesh=mesh)


class ExpertShardsFromNeighbour(DcpTarget):
    """A saver for expert-parallel models that writes each rank's experts from the next ``ep`` rank's shard (as
    one that names expert shards by local index does): every grouped-expert weight of a side's planned mixture
    of experts is saved with its ``ep`` neighbour's values (as many as fit where the split is uneven), the live
    model untouched. Only a save from an expert-parallel side (a TP plan's ``experts`` style, ``ep`` > 1) has
    shards to mix up."""

    def __init__(self):
        super().__init__()
        self._experts: tuple[str, ...] = ()

    def shard(self, module, side, *, group, mesh, default):
        from shardfuzz.case import EXPERT_STYLE

        self._experts = tuple(
            f"{path}.experts." for path, style in getattr(side.engine, "plan", ()) if style == EXPERT_STYLE
        )
        return default(module, side, group=group, mesh=mesh)

    def save(self, state_dict, *, checkpoint_id, process_group):
        model = dict(state_dict["model"])
        for key in sorted(k for k in model if k.startswith(self._experts)):
            value = model[key]
            if not isinstance(value, dtensor().DTensor) or value.device_mesh.size(-1) == 1:
                continue
            ep = value.device_mesh.get_group(value.device_mesh.ndim - 1)
            local = value.to_local().detach().clone()
            shards: list = [None] * dist.get_world_size(ep)
            dist.all_gather_object(shards, local, group=ep)
            neighbour = shards[(dist.get_rank(ep) + 1) % len(shards)].reshape(-1)
            fit = min(neighbour.numel(), local.numel())
            local.view(-1)[:fit].copy_(neighbour[:fit])
            model[key] = dtensor().DTensor.from_local(
                local, value.device_mesh, value.placements, shape=value.shape, stride=value.stride()
            )
        super().save({**state_dict, "model": model}, checkpoint_id=checkpoint_id, process_group=process_group)


class TrainingStateNotLoaded(DcpTarget):
    """A loader that restores the model and the optimizer but not the training state saved beside
    them (the LR scheduler, the gradient scaler, the step counter): they keep the values the fresh
    run started with, so training resumes on a restarted schedule."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        loaded = {k: v for k, v in state_dict.items() if k != "app"}
        super().load(loaded, checkpoint_id=checkpoint_id, process_group=process_group)


class RotaryTableLeftEmpty(LoadSideKept):
    """A loader that allocates the model anew (``to_empty``, as a resume onto a meta-device model does)
    and fills it from the checkpoint: what no checkpoint holds, the non-persistent buffers (the
    rotary table, ``Scale``'s shift), keeps what ``to_empty`` left (zeros here), so the loaded model
    computes something else. Only training on (``continuation``) can see it."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        model = self.loaded_into
        for module in model.modules() if model is not None else ():
            for name in module._non_persistent_buffers_set:
                buffer = getattr(module, name, None)
                if isinstance(buffer, torch.Tensor):
                    buffer.zero_()


class LowBitScalesNotLoaded(DcpTarget):
    """A loader that reads a low-bit optimizer state's codes and not its per-block scales (as one that takes the
    tensor subclass for the plain tensor of its codes would): the scales keep the load side's own, so every
    dequantised moment is off. Only torchao's low-bit optimizer state (``LowBitAdamW``) has scales."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        own = [(scale, scale.clone()) for scale in _low_bit_scales(state_dict["optim"])]
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        with torch.no_grad():
            for scale, before in own:
                scale.copy_(before)


def _low_bit_scales(optim: dict):
    """The ``scale`` tensor of every low-bit optimizer state value (a DTensor's local one)."""
    for _, _, value, _, _ in _optim_entries(optim):
        local = value.to_local() if hasattr(value, "to_local") else value
        if hasattr(local, "codes") and isinstance(getattr(local, "scale", None), torch.Tensor):
            yield local.scale


#: name -> the oracle expected to kill it (others may too).
CATALOGUE: dict[str, str] = {
    "PerturbOneLoadedElement": "complete-state",
    "DropLastRankShard": "complete-state",
    "ShiftLastShard": "complete-state",
    "TransposeShards": "complete-state",
    "DowncastOnSave": "complete-state",
    "OneKeyNotLoaded": "complete-state",
    "BiasesNotSaved": "complete-state",
    "BuffersNotLoaded": "complete-state",
    "ReplicasNotLoaded": "replica-consistency",
    "PartialLoadAllowed": "loud-incompatible-load",
    "SwapMomentsBetweenParameters": "complete-state",
    "SwapExpAvgAndSq": "complete-state",
    "FirstMomentsNotLoaded": "complete-state",
    "HyperparametersNotRestored": "complete-state",
    "StepReset": "complete-state",
    "StepTensorsShared": "continuation",
    "ShardOnDimOne": "layout",
    "TPStyleSwapped": "layout",
    "ExpertShardsFromNeighbour": "complete-state",
    "LastStageSavedBeforeItsStep": "complete-state",
    "StagePlanByPosition": "layout",
    "TrainingStateNotLoaded": "complete-state",
    "RotaryTableLeftEmpty": "continuation",
    "LowBitScalesNotLoaded": "complete-state",
    **LOOP_CATALOGUE,  # each exposed by one training-loop pattern only (loop_mutants.py)
}
