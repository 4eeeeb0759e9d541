"""Shrinking a Case directly, where Hypothesis cannot: a corpus entry holds the case, not its choices.

``shardfuzz shrink ENTRY`` goes on from where a campaign's shrink stopped (its
budget ran out, or the run was stopped) or from a case found by hand. It is a
greedy descent: try each case one step simpler (``simpler_cases``), in order,
and move to the first that still fails the same way; when a whole pass finds
none, the case is a local minimum and the shrink has *finished*. ``case_size``
orders cases, so every move makes the case strictly smaller and the descent ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import attrs

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    LOW_BIT_WIDTH,
    PP,
    TP,
    AdamW,
    Block,
    Case,
    Linear,
    LowBitAdamW,
    Model,
    Sequential,
    Side,
    Unsharded,
    UserModel,
    dumps,
    leaves,
)

__all__ = ["ShrinkResult", "case_size", "shrink_case", "simpler_cases"]


def case_size(case: Case) -> int:
    """A rough size: leaf layers + the Linears' widths + input width + ranks + steps + checks + wrapped modules."""
    widths = sum(out for _, _, out, _ in case.model.linears())
    return (
        (len(leaves(case.model.root)) if isinstance(case.model, Model) else len(case.model.leaf_paths()))
        + widths
        + case.model.input_width
        + case.world_size
        + case.steps
        + len(case.checks)
        + len(case.save.wrap)
        + len(case.load.wrap)
    )


def _order(case: Case) -> tuple:
    """Smaller is simpler: the size first, then the sides' ranks, then the JSON's length (defaults are
    left out of it, so a case that keeps more defaults is shorter), then the seed."""
    return case_size(case), case.save.world_size + case.load.world_size, len(dumps(case)), case.seed


@attrs.frozen
class ShrinkResult:
    case: Case
    finished: bool  # a whole pass found nothing simpler that still fails: a local minimum
    tried: int  # candidate cases run
    moves: int  # times a simpler failing case replaced the current one
    seconds: float


def shrink_case(
    case: Case,
    still_fails: Callable[[Case], bool],
    *,
    budget: float,
    admissible: Callable[[Case], bool] = lambda case: True,
) -> ShrinkResult:
    """Greedy descent from ``case`` (which must fail) for at most ``budget`` seconds.

    ``still_fails(candidate)`` runs a candidate and says whether it fails as ``case``
    does (the same signature); ``admissible`` filters candidates before they run (a
    pool that cannot run a case, a known bug's conditions).
    """
    started = time.monotonic()
    tried = moves = 0
    while True:
        improved = False
        for candidate in simpler_cases(case):
            if time.monotonic() - started >= budget:
                return ShrinkResult(case, False, tried, moves, round(time.monotonic() - started, 2))
            if _order(candidate) >= _order(case) or not admissible(candidate):
                continue
            tried += 1
            if still_fails(candidate):
                case, improved, moves = candidate, True, moves + 1
                break
        if not improved:
            return ShrinkResult(case, True, tried, moves, round(time.monotonic() - started, 2))


def simpler_cases(case: Case) -> Iterator[Case]:
    """Valid cases one step simpler than ``case``, the biggest steps first."""
    yield from _without_low_bit(case)
    for model in _simpler_models(case.model):
        yield from _evolved(case, model=model)
        fitted = [_fitted(side, model) for side in (case.save, case.load)]
        if None not in fitted:
            yield from _evolved(case, model=model, save=fitted[0], load=fitted[1])
    for name, side in (("save", case.save), ("load", case.load)):
        for simpler in _simpler_sides(side):
            yield from _evolved(case, **{name: simpler})
    for loop in case.loop.simpler():
        yield from _evolved(case, loop=loop)
    defaults = Case(model=case.model, save=case.save, load=case.load, optimizer=case.optimizer)
    for name in (
        "training",
        "steps",
        "checks",
        "param_groups",
        "seed",
        "storage",
        "flatten_optimizer_state_dict",
        "ignore_frozen_params",
        "batch_size",
    ):
        if getattr(case, name) != getattr(defaults, name):
            yield from _evolved(case, **{name: getattr(defaults, name)})
    if case.steps > 1:
        yield from _evolved(case, steps=case.steps - 1)
    if case.steps and case.steps != defaults.steps:
        yield from _evolved(case, steps=0)
    for check in case.checks:
        yield from _evolved(case, checks=tuple(c for c in case.checks if c != check))


def _without_low_bit(case: Case) -> Iterator[Case]:
    """A low-bit optimizer's case with torch's AdamW instead, and without the wide Linear it was drawn with (the
    strategies append it so that torchao quantises something): one step, where a failure does not need them."""
    if not isinstance(case.optimizer, LowBitAdamW):
        return
    model = case.model
    if isinstance(model, Model) and isinstance(model.root, Sequential):
        children = model.root.children
        last = children[-1]
        if len(children) > 1 and isinstance(last, Linear) and last.out_features == LOW_BIT_WIDTH:
            for narrower in _evolved(model, root=Sequential(children[:-1])):  # none where no trainable Linear is left
                fitted = [_fitted(side, narrower) for side in (case.save, case.load)]
                if None not in fitted:
                    yield from _evolved(case, optimizer=AdamW(), model=narrower, save=fitted[0], load=fitted[1])
    yield from _evolved(case, optimizer=AdamW())


def _evolved(instance, **changes) -> Iterator:
    """``instance`` (a case, side or model) with ``changes``, or nothing where its validators refuse them."""
    try:
        yield attrs.evolve(instance, **changes)
    except (ValueError, TypeError):
        return


def _simpler_sides(side: Side) -> Iterator[Side]:
    shape = side.mesh_shape
    # FSDP1 keeps the mesh it was drawn with where a smaller one would meet a known hang the strategies steer
    # around: a hybrid mesh that leaves ranks of the world out, or any subgroup on a torch that hangs there.
    engine = side.engine
    if not (isinstance(engine, FSDP1) and (engine.hybrid or not _fsdp1_subgroups())):
        smaller = [(1,), (shape[0] - 1,)] if len(shape) == 1 else [(shape[0] - 1, shape[1]), (shape[0], shape[1] - 1)]
        for mesh in smaller:
            if all(n >= 1 for n in mesh) and mesh != shape:
                yield from _evolved(side, mesh_shape=mesh)
    if side.wrap:
        yield from _evolved(side, wrap=())
    default_engine = (
        type(side.engine)()
        if not isinstance(side.engine, FSDP1) or not side.engine.hybrid
        else FSDP1(sharding_strategy=side.engine.sharding_strategy)
    )
    if side.engine != default_engine:
        yield from _evolved(side, engine=default_engine)
    if not isinstance(side.engine, (DDP, Unsharded)) and len(shape) == 1:
        yield from _evolved(side, engine=DDP(), wrap=())
        yield from _evolved(side, engine=Unsharded(), mesh_shape=(1,), wrap=())
    if side.checkpointed:
        yield from _evolved(side, activation_checkpointing="none", checkpointed=())
    for name, default in (
        ("state_dict_api", "combined"),
        ("cpu_offload", False),
        ("broadcast_from_rank0", False),
        ("compiled", False),
        ("meta_init", False),
        ("mixed_precision", "none"),
        ("offload_params", False),
    ):
        if getattr(side, name) != default:
            yield from _evolved(side, **{name: default})
    if isinstance(engine, PP):
        if engine.plan:  # tensor parallelism out of the stages, then one planned module fewer
            yield from _evolved(side, engine=attrs.evolve(engine, plan=()), mesh_shape=(shape[0], 1))
        for entry in engine.plan if len(engine.plan) > 1 else ():
            yield from _evolved(side, engine=attrs.evolve(engine, plan=[e for e in engine.plan if e != entry]))
        if engine.fsdp:
            yield from _evolved(side, engine=attrs.evolve(engine, fsdp=False), mesh_shape=(shape[0], 1), wrap=())
        if shape[0] > 2:
            yield from _evolved(side, mesh_shape=(shape[0] - 1, shape[1]))
        yield from _evolved(side, engine=FSDP2(), mesh_shape=(shape[0] * shape[1],))
    if isinstance(engine, TP):
        for entry in engine.plan if len(engine.plan) > 1 else ():
            yield from _evolved(side, engine=attrs.evolve(engine, plan=[e for e in engine.plan if e != entry]))
        if engine.fsdp:
            yield from _evolved(side, engine=attrs.evolve(engine, fsdp=False), mesh_shape=(1, shape[1]), wrap=())
        yield from _evolved(side, engine=FSDP2(), mesh_shape=(shape[0] * shape[1],))


def _fitted(side: Side, model: Model) -> Side | None:
    """``side`` with what names modules (its wrap set, checkpointed leaves, TP plan) cut down to what
    ``model`` still has; None where nothing of a TP engine's plan is left (PP goes on without tensor parallelism)."""
    modules, linears, experts, leaf_paths = (
        set(model.submodule_paths()),
        {fqn for fqn, _ in model.linear_nodes()},
        {fqn for fqn, _ in model.experts_nodes()},
        set(model.leaf_paths()),
    )
    checkpointed = [path for path in side.checkpointed if path in leaf_paths]
    engine, mesh_shape = side.engine, side.mesh_shape
    if isinstance(engine, (TP, PP)) and engine.plan:
        plan = [(path, style) for path, style in engine.plan if path in (experts if style == "experts" else linears)]
        if not plan and isinstance(engine, TP):
            return None
        engine = attrs.evolve(engine, plan=plan)
        if not plan:  # PP without tensor parallelism inside: dp 1
            mesh_shape = (mesh_shape[0], 1)
    return attrs.evolve(
        side,
        engine=engine,
        mesh_shape=mesh_shape,
        wrap=[path for path in side.wrap if path in modules],
        checkpointed=checkpointed,
        activation_checkpointing=side.activation_checkpointing if checkpointed else "none",
    )


def _fsdp1_subgroups() -> bool:
    from shardfuzz.capabilities import capabilities

    return capabilities().fsdp1_subgroups


def _simpler_models(model: Model | UserModel) -> Iterator[Model]:
    if isinstance(model, UserModel):
        return  # the user's model is shrunk around, not into
    for root in _without_one_leaf(model.root):
        yield from _evolved(model, root=root)
    for root in _narrower(model.root):
        yield from _evolved(model, root=root)
    for width in sorted({1, model.input_width // 2} - {0, model.input_width}):
        yield from _evolved(model, input_width=width)
    if model.dtype != "float32":
        yield from _evolved(model, dtype="float32")


def _without_one_leaf(node):
    """The tree with one leaf (or one whole container) left out, for each in turn."""
    children = node.children
    for i, child in enumerate(children):
        rest = children[:i] + children[i + 1 :]
        if rest:
            yield type(node)(rest)
        if isinstance(child, (Sequential, Block)):
            for smaller in _without_one_leaf(child):
                yield type(node)(children[:i] + (smaller,) + children[i + 1 :])
            yield type(node)(children[:i] + child.children + children[i + 1 :])  # the container flattened away


def _narrower(node):
    """The tree with one leaf made simpler: a Linear narrower or plain, a Conv 1-D with kernel 1."""
    for i, child in enumerate(node.children):
        for simpler in _simpler_leaf(child):
            yield type(node)(node.children[:i] + (simpler,) + node.children[i + 1 :])


def _simpler_leaf(node):
    if isinstance(node, (Sequential, Block)):
        yield from _narrower(node)
    else:
        yield from node.simpler()
