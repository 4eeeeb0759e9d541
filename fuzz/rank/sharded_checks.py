"""The oracles that look at the sharded model itself, not at its gathered state: each reads what it judges off
this rank's model (layouts, each rank's pieces, the offloaded full state, two APIs' state dicts) and hands it to
``oracles``."""

from __future__ import annotations

from typing import Any

import attrs
import torch.distributed as dist

from shardfuzz.case import FSDP2, PP, TP, Side, child_items
from shardfuzz.rank import oracles
from shardfuzz.rank.portable import steps as rank_steps
from shardfuzz.rank.portable.sharding import dtensor, stage_bounds, unwrapped_name
from shardfuzz.rank.portable.steps import plain
from shardfuzz.verdict import Mismatch

__all__ = ["api_parity", "full_offload", "layout", "replica_consistency"]


def layout(model, spec, side: Side, *, rank: int) -> list[Mismatch]:
    """Each DTensor parameter's mesh size, placements, shape and dtype against what the side's engine
    should give it (FSDP2, TP and PP sides; ``rank``: the case's, which places it in a pipeline)."""
    expected = _pipeline_layout(spec, side, rank) if isinstance(side.engine, PP) else _expected_layout(spec, side)
    return oracles.layout(_layout_records(model), expected, rank=rank)


def _layout_records(model) -> dict[str, oracles.LayoutRecord]:
    DTensor = dtensor().DTensor

    return {
        unwrapped_name(name): oracles.LayoutRecord(
            p.device_mesh.size(), repr(tuple(p.placements)), tuple(p.shape), str(p.dtype)
        )
        for name, p in model.named_parameters()
        if isinstance(p, DTensor)
    }


def _expected_layout(spec, side: Side) -> dict[str, oracles.LayoutRecord]:
    """FSDP2 shards every parameter on dim 0 (or ``shard_dim`` where it has one) of the
    side's mesh, replicated across dim 0 of a 2-D mesh, in the model's dtype, at its full shape.
    Tensor parallelism: ``_tp_layout``."""
    Replicate, Shard = dtensor().Replicate, dtensor().Shard

    engine = side.engine
    if isinstance(engine, TP):
        return _tp_layout(spec, side)
    assert isinstance(engine, FSDP2)  # the layout oracle judges FSDP2 and TP sides only

    def placements(ndim: int) -> str:
        shard = Shard(engine.dim_for(ndim))
        return repr((Replicate(), shard) if len(side.mesh_shape) == 2 else (shard,))

    return {
        name: oracles.LayoutRecord(side.world_size, placements(len(shape)), shape, f"torch.{spec.dtype}")
        for name, shape in spec.parameter_shapes().items()
    }


def _tp_layout(spec, side: Side) -> dict[str, oracles.LayoutRecord]:
    """A planned Linear's weight and bias on the ``tp`` dimension: ``Shard(0)`` colwise, the weight
    ``Shard(1)`` and the bias ``Replicate()`` rowwise; a planned mixture of experts' grouped weights
    ``Shard(0)`` (the expert dimension), its router as an unplanned Linear's. With ``fsdp`` each parameter is also sharded on
    dim 0 across ``dp``: a planned one on the whole 2-D mesh (``_StridedShard`` over ``Shard(0)`` where
    both split dim 0), any other on ``dp`` alone; without, only planned ones are DTensors."""
    Replicate, Shard = dtensor().Replicate(), dtensor().Shard
    engine = side.engine
    assert isinstance(engine, TP)
    dp, tp = side.mesh_shape
    styles = dict(engine.plan)
    records = {}
    for name, shape in spec.parameter_shapes().items():
        path, _, kind = name.rpartition(".")
        owner, _, grouped = path.rpartition(".")
        style = styles.get(path) or (styles.get(owner) if grouped == "experts" else None)
        if style is None:
            if engine.fsdp:
                records[name] = oracles.LayoutRecord(dp, repr((Shard(0),)), shape, f"torch.{spec.dtype}")
            continue
        on_tp = Shard(0) if style in ("colwise", "experts") else Shard(1) if kind == "weight" else Replicate
        if not engine.fsdp:
            records[name] = oracles.LayoutRecord(tp, repr((on_tp,)), shape, f"torch.{spec.dtype}")
            continue
        on_dp = _strided_shard(tp) if on_tp == Shard(0) else Shard(0)
        records[name] = oracles.LayoutRecord(dp * tp, repr((on_dp, on_tp)), shape, f"torch.{spec.dtype}")
    return records


def _pipeline_layout(spec, side: Side, rank: int) -> dict[str, oracles.LayoutRecord]:
    """A pipeline stage holds its own root children's parameters and no other (``sharding.stage_bounds``): with
    ``fsdp``, each ``Shard(0)`` across the stage's ``dp`` ranks at its full shape; with a ``plan``, its planned
    modules' as ``_tp_layout`` has them on ``tp``; else none is a DTensor."""
    engine = side.engine
    assert isinstance(engine, PP)
    stages, dp = side.mesh_shape
    names = [name for name, _ in child_items(spec.root)]
    bounds = stage_bounds(len(names), stages)
    kept = set(names[bounds[rank // dp] : bounds[rank // dp + 1]])
    if engine.plan:
        in_stage = tuple((path, style) for path, style in engine.plan if path.split(".")[0] in kept)
        if not in_stage:  # a stage the plan splits nothing of: no DTensors in it
            return {}
        tp_side = attrs.evolve(side, engine=TP(plan=in_stage), mesh_shape=(1, dp))
        return _tp_layout(spec, tp_side)
    if not engine.fsdp:
        return {}
    placements = repr((dtensor().Shard(0),))
    return {
        name: oracles.LayoutRecord(dp, placements, shape, f"torch.{spec.dtype}")
        for name, shape in spec.parameter_shapes().items()
        if name.split(".")[0] in kept
    }


def _strided_shard(split_factor: int):
    """FSDP2's placement on ``dp`` of a parameter TP already split on dim 0."""
    from torch.distributed.tensor.placement_types import _StridedShard

    return _StridedShard(0, split_factor=split_factor)


def replica_consistency(model, optim, *, group, rank: int) -> list[Mismatch]:
    """Every rank's pieces of the sharded (not gathered) state, judged together on rank 0.

    A DTensor's piece is its local shard, named by its mesh coordinates on the dimensions
    it is sharded on (replicas across the others share that name); a ShardedTensor's, each
    local shard by its offsets; anything else (DDP's parameters, buffers, ``step``,
    hyperparameters) is held whole on every rank.
    """
    try:
        pieces: Any = _rank_pieces(model, optim)
        failed = None
    except Exception as exc:  # still joins the gather, so that rank 0 is not left waiting in it (a hang)
        pieces, failed = f"{type(exc).__name__}: {exc}", exc
    first = dist.get_global_rank(group, 0)  # gather_object takes a global rank: the group's first, not the world's
    if rank != 0:
        dist.gather_object(pieces, None, dst=first, group=group)
        if failed is not None:
            raise failed
        return []
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.gather_object(pieces, gathered, dst=first, group=group)
    if failed is not None:
        raise failed
    unread = {r: why for r, why in enumerate(gathered) if isinstance(why, str)}
    if unread:
        raise RuntimeError(
            f"the sharded state could not be read on ranks {sorted(unread)}: {next(iter(unread.values()))}"
        )
    return oracles.replica_consistency(dict(enumerate(gathered)))


def _rank_pieces(model, optim) -> dict[tuple[str, str], Any]:
    """This rank's pieces of the sharded state, by (name, region)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optim, options=StateDictOptions(flatten_optimizer_state_dict=True))
    pieces: dict[tuple[str, str], Any] = {}
    for prefix, state in (("model", model_sd), ("optim", optim_sd)):
        for key, value in state.items():
            for region, piece in _pieces(value):  # a low-bit optimizer state: its dequantised values and parts
                for name, part in rank_steps.plain_parts(f"{prefix}.{unwrapped_name(key)}", piece).items():
                    pieces[name, region] = part
    return pieces


def _pieces(value):
    if isinstance(value, dtensor().DTensor):
        coordinate = value.device_mesh.get_coordinate() or ()
        sharded = [
            f"{dim}={at}"
            for dim, (at, placement) in enumerate(zip(coordinate, value.placements))
            if not placement.is_replicate()
        ]
        return [(f"mesh coordinate {','.join(sharded) or 'any'}", plain(value.to_local()))]
    if hasattr(value, "local_shards"):  # FSDP1's ShardedTensor
        return [
            (f"shard at {list(shard.metadata.shard_offsets)}", plain(shard.tensor)) for shard in value.local_shards()
        ]
    return [("whole", plain(value))]


def full_offload(model, optim, actual, *, rank: int) -> list[Mismatch]:
    held = rank_steps.offloaded_full_state(model, optim)
    shapes = rank_steps.offloaded_shapes(actual)
    return oracles.full_offload(held, shapes, rank=rank)


def api_parity(side: Side, model, optim, *, rank: int, group) -> list[Mismatch]:
    """Each pair of APIs that must agree on the save side's state (``rank_steps.api_parity_pairs``)."""
    pairs = rank_steps.api_parity_pairs(model, optim, engine=type(side.engine).__name__, group=group)
    return [m for what, ours, theirs in pairs for m in oracles.api_parity(ours, theirs, rank=rank, what=what)]
