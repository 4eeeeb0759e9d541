"""``sides()``: one side of a round-trip (engine, mesh, wrap set, state-dict type, device), drawn for a model; and the
rules the side draws keep (which engines a target takes, the TP plans that meet a known hang)."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from shardfuzz.capabilities import capabilities
from shardfuzz.case import DDP, DEVICES, FSDP1, PP, TP, Model, Side, Unsharded, ZeRO, leaves_a_rank_empty
from shardfuzz.strategies._helpers import check_choices, check_int, factorisations
from shardfuzz.strategies.engines import TWO_D_ENGINES, engines, tp_plans, wrap_sets
from shardfuzz.strategies.modules import MAX_CHILDREN
from shardfuzz.strategies.options import rarely, state_dict_apis, state_dict_types
from shardfuzz.strategies.topology import mesh_shapes
from shardfuzz.targets.support import EVERYTHING, TargetSupport

__all__ = ["sides"]


def _check_devices(devices, gpus) -> tuple[tuple[str, ...], int]:
    devices = check_choices("devices", devices, DEVICES)
    if gpus is None:
        gpus = capabilities().cuda_devices
    check_int("gpus", gpus, minimum=0)
    if "cuda" in devices and gpus < 1:
        raise InvalidArgument(
            f"devices={devices!r} includes 'cuda' but gpus={gpus} ({capabilities().off.get('device cuda', 'no GPU')})"
        )
    return devices, gpus


def sides(
    model: Model,
    *,
    max_world_size: int = 4,
    engine_names=None,
    devices=("cpu",),
    gpus: int | None = None,
    support: TargetSupport | None = None,
) -> st.SearchStrategy[Side]:
    """One end of the round-trip for ``model``: a device, a mesh, an engine that runs on it, its units.

    A ``cuda`` side uses at most ``gpus`` ranks (one per GPU; NCCL refuses two ranks
    on one GPU); ``gpus`` defaults to the GPUs torch sees here. ``support``: only sides a target
    declares it runs (engines, state-dict types, HSDP, sides spanning the whole pool).
    """
    draw_side = _side_drawer(
        max_world_size=max_world_size, engine_names=engine_names, devices=devices, gpus=gpus, support=support
    )
    return st.composite(lambda draw: draw_side(draw, model))()


def _side_drawer(*, max_world_size, engine_names, devices, gpus, support: TargetSupport | None):
    """``draw_side(draw, model)``, with every strategy it draws from built once, here.

    Building strategies inside a draw (a composite, a one_of) costs Hypothesis a
    validation each time: done once per case that was most of the time a case
    took to draw.
    """
    support = support or EVERYTHING
    offered = _supported_engines(
        check_choices("engine_names", engine_names, capabilities().engines), support, max_world_size
    )
    devices, gpus = _check_devices(devices, gpus)
    two_d = capabilities().hsdp and support.hybrid and any(n in TWO_D_ENGINES for n in offered)
    limits = {"cpu": max_world_size, "cuda": min(max_world_size, gpus)}
    device_choice = st.sampled_from(devices)
    spans_pool = support.whole_pool and not support.per_side_pools  # per-side pools: a pool of each side's size
    meshes = {
        limit: mesh_shapes(min_size=limit if spans_pool else 1, max_size=limit, max_dims=2 if two_d else 1)
        for device, limit in limits.items()
        if device in devices
    }
    engines_on = {dims: engines(names=offered, mesh_dims=dims) for dims in ((1, 2) if two_d else (1,))}
    hybrid_meshes = {limit: st.sampled_from(factorisations(limit, min_shards=2) or [(1, limit)]) for limit in meshes}
    # (dp, tp) with tp >= 2 on at most ``limit`` ranks: dp 1 alone, or any dp where FSDP2 shards across it
    tp_meshes = {
        (limit, fsdp): [(dp, tp) for tp in range(2, limit + 1) for dp in range(1, limit // tp + 1) if fsdp or dp == 1]
        for limit in meshes
        for fsdp in (False, True)
    }
    expert_parallel, one_in_three = capabilities().expert_parallel and "tp" in offered, rarely(one_in=3)
    tp_inside = "tp" in capabilities().engines and support.allows_engine("tp")  # tensor parallelism in PP's stages
    state_dicts, apis = state_dict_types(), state_dict_apis()
    if support.state_dicts is not None:
        allowed = [t for t in support.state_dicts if t != "local"]  # local: decided for the pair in cases()
        if not allowed:
            raise InvalidArgument(f"support.state_dicts={support.state_dicts!r} leaves no state-dict type to draw")
        state_dicts = st.sampled_from(allowed)

    def draw_side(draw, model: Model) -> Side:
        device = draw(device_choice)
        limit = limits[device]
        mesh = draw(meshes[limit])
        engine = draw(engines_on[len(mesh)])
        if expert_parallel and model.experts_nodes() and draw(one_in_three):  # experts split where a model has some
            engine = TP(fsdp=draw(st.booleans()))
        if isinstance(engine, Unsharded):
            mesh = (1,)
        if isinstance(engine, FSDP1) and engine.hybrid:
            # Two known torch bugs, each kept under test by its corpus entry, would
            # otherwise eat campaigns: FSDP1 HSDP on a mesh that leaves out ranks of the
            # world hangs in get_state_dict (dbe8638ee6e07769), and a shard dimension of
            # size 1 never syncs the replicas (c0d72805f77a3917, which then sets off
            # hangs elsewhere). So FSDP1 HSDP meshes span the whole pool with shards >= 2.
            mesh = draw(hybrid_meshes[limit])
        elif isinstance(engine, FSDP1) and not capabilities().fsdp1_subgroups:
            # See capabilities: FSDP1 on a subgroup hangs in this torch, so the side spans the
            # pool, on CPU where a CUDA side could not (one rank per GPU, fewer GPUs than ranks).
            if limit == max_world_size:
                mesh = (limit,)
            elif "cpu" in devices:
                device, mesh = "cpu", (max_world_size,)
            else:
                engine, mesh = DDP(), (limit,)
        elif isinstance(engine, TP):
            options = tp_meshes[limit, engine.fsdp]
            if options:
                mesh = draw(st.sampled_from(options))
                engine = attrs.evolve(engine, plan=draw(tp_plans(model, tp=mesh[-1])))
                if engine.fsdp and _meets_the_tp_gather_hang(model, engine.plan, mesh[-1]):
                    # FSDP2 + TP with a rowwise split and an empty tp shard hangs in torch's full gather (a known
                    # bug of 11 forms in corpus/, 8284f91c among them): each new form cost a campaign its shrink
                    # at 30 s a try (run N: 316 s of 600), so such a plan goes without FSDP2 here.
                    engine, mesh = attrs.evolve(engine, fsdp=False), (1, mesh[-1])
            else:  # one rank: no tensor parallelism
                engine, mesh = DDP(), (limit,)
        elif isinstance(engine, PP):  # (pp, dp): as many stages as the root has children, at most (as coverage offers)
            stages = min(len(model.root.children), MAX_CHILDREN) if isinstance(model, Model) else 0
            options = [(pp, dp) for dp, pp in tp_meshes[limit, engine.fsdp] if pp <= stages]
            inside = [(pp, tp) for pp, tp in tp_meshes[limit, True] if 2 <= pp <= stages]  # (pp, tp): tp >= 2 there
            if inside and not engine.fsdp and tp_inside and draw(st.booleans()):  # TP inside the stages
                mesh = draw(st.sampled_from(inside))
                engine = attrs.evolve(engine, plan=draw(tp_plans(model, tp=mesh[1])))
            else:
                engine, mesh = (engine, draw(st.sampled_from(options))) if options else (DDP(), (limit,))
        return Side(
            engine=engine,
            mesh_shape=mesh,
            wrap=draw(wrap_sets(model)) if engine.shards_listed_modules else (),
            state_dict=draw(state_dicts),
            device=device,
            state_dict_api=draw(apis),
        )

    return draw_side


def _meets_the_tp_gather_hang(model, plan, tp: int) -> bool:
    """Whether FSDP2 over this tensor-parallel ``plan`` would meet the known FSDP2 + TP empty-shard gather hang: a
    rowwise split, and a planned Linear (or mixture of experts) that leaves a ``tp`` rank an empty shard."""
    styles = dict(plan)
    if "rowwise" not in styles.values():
        return False
    widths = [w for fqn, fed, out, _ in model.linears() if fqn in styles for w in (fed, out)]
    widths += [node.experts for fqn, node in model.experts_nodes() if fqn in styles]
    return any(leaves_a_rank_empty(w, tp) for w in widths)


def zero_routed(save: Side, load: Side) -> tuple[Side, Side]:
    """``save`` and ``load`` made a pair DeepSpeed has a route for (``Case._check_zero_routes``): a ZeRO load side
    reads a ZeRO save side's checkpoint (one drawn after another engine loads what it saves itself, into the same
    layout), and a ZeRO checkpoint loads into a ZeRO engine or, consolidated by ``zero_to_fp32``, an unsharded model
    (another engine is made that)."""
    if isinstance(load.engine, ZeRO) and not isinstance(save.engine, ZeRO):
        save = load
    if isinstance(save.engine, ZeRO) and not isinstance(load.engine, (ZeRO, Unsharded)):
        load = Side(Unsharded(), (1,), device=load.device, state_dict=load.state_dict)
    return save, load


def _pipelined(*sides: Side) -> bool:
    """Whether one of ``sides`` is pipelined: it takes no activation checkpointing, ``torch.compile``, offloaded
    or broadcast state dict (``Side._check_pipeline``), and its case no training state, gradless parameters or
    late param group (``Case._check_pipelines``)."""
    return any(isinstance(side.engine, PP) for side in sides)


def _supported_engines(offered: tuple[str, ...], support: TargetSupport, max_world_size: int) -> tuple[str, ...]:
    """The offered engine names (lower case, as ``engines()`` takes them) the target supports."""
    kept = tuple(
        name
        for name in offered
        if support.allows_engine(name)
        and not (support.whole_pool and not support.per_side_pools and name == "unsharded" and max_world_size > 1)
        and not (name in ("tp", "pp") and max_world_size < 2)  # tensor and pipeline parallelism need two ranks
    )
    if not kept:
        raise InvalidArgument(f"the target supports none of the engines offered here ({list(offered)})")
    return kept
