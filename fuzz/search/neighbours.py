"""A finding's neighbours: each one-step change of its case that a bug report would name (an engine, an
option, the mesh, the optimizer, the steps, the widths, ...), for ``explain`` to run.

Each is built from the case; none is drawn. A change the data model refuses gives None (``or_none``), and
the explanation records it as not supported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    CHECKS,
    DCP_APIS,
    DDP,
    DTYPES,
    FSDP1,
    FSDP2,
    GRADLESS,
    MIXED_PRECISION,
    OPTIMIZER_CLASSES,
    PP,
    STATE_DICT_APIS,
    STATE_DICT_TYPES,
    STORAGE_CLASSES,
    TP,
    Block,
    Case,
    Dcp,
    HfSafetensors,
    Linear,
    LowBitAdamW,
    Model,
    Sequential,
    Side,
    TrainingState,
    Unsharded,
)

__all__ = ["EXPLAINED_STEPS", "appended", "neighbours", "or_none", "scaled"]


def _side_neighbours(name: str, side: Side) -> Iterator[tuple[str, str, Side]]:
    """Each one-step change of one side: its engine, the engine's options, its mesh, its state-dict type, its
    options (each Side field at another value)."""
    engine = side.engine
    flat = (math.prod(side.mesh_shape),)
    for kind in (FSDP1, FSDP2, DDP, Unsharded):
        if type(engine) is not kind:
            mesh = (1,) if kind is Unsharded else flat
            yield (
                f"{name}_engine",
                f"{type(engine).__name__} -> {kind.__name__}",
                or_none(side, engine=kind(), mesh_shape=mesh, wrap=() if kind in (DDP, Unsharded) else side.wrap),
            )
    for attribute in attrs.fields(type(engine)):
        for value in _other_values(attribute, getattr(engine, attribute.name)):
            changed_engine = or_none(engine, **{attribute.name: value})
            change, changed = f"{attribute.name} -> {value!r}", or_none(side, engine=changed_engine)
            if changed is None and changed_engine is not None:  # an option that needs the other mesh (HSDP's 2-D)
                other: tuple[int, ...] = (1, *flat) if len(side.mesh_shape) == 1 else flat
                change, changed = f"{change} on mesh {other}", or_none(side, engine=changed_engine, mesh_shape=other)
            yield f"{name}_{attribute.name}", change, changed
    if len(side.mesh_shape) == 2 and not isinstance(engine, TP):
        yield f"{name}_mesh", f"mesh {side.mesh_shape} -> {flat}", or_none(side, mesh_shape=flat)
    elif len(side.mesh_shape) == 1:
        for size in sorted({1, 2, 3, 4} - {side.mesh_shape[0]}):  # every size drawn: '2|4' had left out 3
            yield f"{name}_world_size", f"{side.mesh_shape[0]} -> {size} ranks", or_none(side, mesh_shape=(size,))
    if isinstance(engine, TP) and any(style == "experts" for _, style in engine.plan):  # expert parallelism away
        linears = [(path, style) for path, style in engine.plan if style != "experts"]
        yield f"{name}_tp_ep", "experts split -> whole", or_none(side, engine=or_none(engine, plan=linears))
    if isinstance(engine, PP) and engine.plan:  # tensor parallelism out of the stages
        yield (
            f"{name}_pp_tp",
            "tp inside the stages -> none",
            or_none(side, engine=or_none(engine, plan=()), mesh_shape=(side.mesh_shape[0], 1)),
        )
    if isinstance(engine, PP):  # the number of stages
        for size in sorted({2, 3, 4} - {side.mesh_shape[0]}):
            change = f"pp {side.mesh_shape[0]} -> {size}"
            yield f"{name}_pp_degree", change, or_none(side, mesh_shape=(size, side.mesh_shape[1]))
    if isinstance(engine, TP) and side.mesh_shape[0] == 1:  # the tp degree, on the (1, tp) mesh TP is drawn on
        for size in sorted({2, 3, 4} - {side.mesh_shape[1]}):
            yield f"{name}_world_size", f"tp {side.mesh_shape[1]} -> {size}", or_none(side, mesh_shape=(1, size))
    for state_dict in STATE_DICT_TYPES:
        if state_dict != side.state_dict:
            yield f"{name}_state_dict", f"{side.state_dict} -> {state_dict}", or_none(side, state_dict=state_dict)
    if side.wrap:
        yield f"{name}_wrapped", "wrap set -> none", or_none(side, wrap=())
    for option, values in (("state_dict_api", STATE_DICT_APIS), ("mixed_precision", MIXED_PRECISION)):
        for value in values:
            if value != getattr(side, option):
                yield f"{name}_{option}", f"{option} -> {value}", or_none(side, **{option: value})
    if side.activation_checkpointing != "none":
        yield (
            f"{name}_activation_checkpointing",
            "activation checkpointing -> none",
            or_none(side, activation_checkpointing="none", checkpointed=()),
        )
    for option in ("cpu_offload", "broadcast_from_rank0", "compiled", "meta_init", "offload_params"):
        value = not getattr(side, option)
        yield f"{name}_{option}", f"{option} -> {value}", or_none(side, **{option: value})


#: The fields that hold a part built by another ``or_none`` (None there: that part was refused).
_PARTS = ("engine", "model", "save", "load", "loop")


def _other_values(attribute, current) -> list:
    """The other values an engine option takes: a bool's other, an enumerated option's others."""
    if isinstance(current, bool):
        return [not current]
    options = getattr(attribute.validator, "options", None)
    return [value for value in options or () if value != current]


def or_none(instance, **changes):
    """``instance`` with ``changes``, or None where its validators refuse them."""
    if instance is None or any(changes.get(name, instance) is None for name in _PARTS):
        return None  # a part that could not be changed makes no neighbour
    try:
        return attrs.evolve(instance, **changes)
    except (ValueError, TypeError):
        return None


#: Step counts up to this one are each a neighbour (the strategies draw 0 to 3 by default).
EXPLAINED_STEPS = 3


def _storage_neighbours(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    """The other storage kinds at their defaults, and the case's own kind with each option changed: DCP's other
    save APIs (legacy, async) and writer options, the Hugging Face writer with or without consolidation. A bug met
    through one DCP save is then measured on the others, and its conditions name the ones it needs."""
    storage = case.storage
    for kind in STORAGE_CLASSES:
        if type(storage) is not kind:
            yield "storage", f"{type(storage).__name__} -> {kind.__name__}", or_none(case, storage=kind())
    if isinstance(storage, Dcp):
        for api in DCP_APIS:
            if api != storage.api:
                yield "storage", f"dcp {storage.api} -> {api}", or_none(case, storage=attrs.evolve(storage, api=api))
        threads = 2 if storage.thread_count == 1 else 1
        for label, change, changed in (  # each option under its ``dimensions`` label
            (
                "writer_single_file_per_rank",
                "single_file_per_rank",
                {"single_file_per_rank": not storage.single_file_per_rank},
            ),
            ("writer_threads", "thread_count", {"thread_count": threads}),
            ("writer_sync_files", "sync_files", {"sync_files": not storage.sync_files}),
        ):
            yield label, f"{change} -> {changed[change]}", or_none(case, storage=attrs.evolve(storage, **changed))
    elif isinstance(storage, HfSafetensors):
        consolidated = not storage.consolidated
        yield "storage", f"consolidated -> {consolidated}", or_none(case, storage=HfSafetensors(consolidated))


def _case_neighbours(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    name = case.optimizer.torch_class()
    # torchao's low-bit AdamW in each bit width it offers here (where it is installed), torch's kinds at their defaults
    others = [kind() for kind in OPTIMIZER_CLASSES if kind is not LowBitAdamW]
    others += [LowBitAdamW(bits=bits) for bits in capabilities().low_bit_optimizers]
    for other in others:
        if type(other) is not type(case.optimizer) or other.torch_class() != name:
            yield "optimizer", f"{name} -> {other.torch_class()}", or_none(case, optimizer=other)
    for steps in sorted(set(range(EXPLAINED_STEPS + 1)) - {case.steps}):  # every count drawn: '1|3' left out 2
        yield "steps", f"{case.steps} -> {steps} steps", or_none(case, steps=steps)
    yield (
        "param_groups",
        f"{case.param_groups} -> {3 - case.param_groups} param groups",
        or_none(case, param_groups=3 - case.param_groups),
    )
    flatten = not case.flatten_optimizer_state_dict
    yield "flatten_optimizer_state_dict", f"flatten -> {flatten}", or_none(case, flatten_optimizer_state_dict=flatten)
    for check in CHECKS:
        checks = tuple(c for c in case.checks if c != check) if check in case.checks else (*case.checks, check)
        yield (
            f"check_{check}",
            f"check {check} {'off' if check in case.checks else 'on'}",
            or_none(case, checks=checks),
        )
    if case.load_mutation is not None:
        yield "load_mutation", f"{case.load_mutation} -> none", or_none(case, load_mutation=None)
    yield from _storage_neighbours(case)
    yield (
        "ignore_frozen_params",
        f"ignore_frozen_params -> {not case.ignore_frozen_params}",
        or_none(case, ignore_frozen_params=not case.ignore_frozen_params),
    )
    training = None if case.training is not None else TrainingState()
    yield (
        "training_state",
        f"training state -> {'none' if training is None else 'an LR scheduler'}",
        or_none(case, training=training),
    )
    yield from _loop_neighbours(case)
    yield "seed", f"seed {case.seed} -> {case.seed + 1}", or_none(case, seed=case.seed + 1)


def _loop_neighbours(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    """Each of the loop's fields turned (``Loop.dimensions``' names; a second round-trip's load side holding its
    state dict goes with it)."""
    loop = case.loop
    turned = (
        ("save_held_state_dict", "save_held"),
        ("lenient_load", "lenient"),
        ("empty_param_group", "empty_group"),
        ("late_param_group", "late_group"),
        ("second_save", "second_save"),
    )
    for dimension, field_name in turned:
        value = not getattr(loop, field_name)
        changed = or_none(loop, **{field_name: value})
        yield dimension, f"{field_name} -> {value}", or_none(case, loop=changed)
    if loop.resumes > 1:
        yield "resumes", "2 -> 1 round-trip", or_none(case, loop=or_none(loop, resumes=1, load_held=False))
        changed = or_none(loop, load_held=not loop.load_held)
        yield "load_held_state_dict", f"load_held -> {not loop.load_held}", or_none(case, loop=changed)
    else:
        yield "resumes", "1 -> 2 round-trips", or_none(case, loop=or_none(loop, resumes=2))
    for gradless in GRADLESS:
        if gradless != loop.gradless:
            changed = or_none(loop, gradless=gradless)
            yield "gradless_params", f"gradless {loop.gradless} -> {gradless}", or_none(case, loop=changed)
    ranks_from = 0 if loop.ranks_from else 1  # a pool without a rank to spare refuses the second
    change = f"sides from global rank {loop.ranks_from} -> {ranks_from}"
    yield "group_without_rank0", change, or_none(case, loop=or_none(loop, ranks_from=ranks_from))


def _model_neighbours(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    model = case.model
    if not isinstance(model, Model):
        return  # a user's own model is explained around, not into
    for dtype in DTYPES:
        if dtype != model.dtype:
            yield "dtype", f"{model.dtype} -> {dtype}", or_none(case, model=or_none(model, dtype=dtype))
    yield "widths", "every width x2", or_none(case, model=scaled(model, 2))
    last = model.output_width
    deeper = or_none(model, root=appended(model.root, Linear(max(last, 1))))
    yield "linears", "one more Linear", or_none(case, model=deeper)


def _parallel_neighbours(name: str, side: Side, model) -> Iterator[tuple[str, str, Side | None]]:
    """A side of another engine made tensor-parallel (the model's first Linear split each way, on a (1, n) mesh of
    as many ranks, two at least) or pipelined (two stages, where the root has two children): without these, a bug
    explained from a DDP case never said whether TP or PP sides have it too (``274fc8c2``, a form ``1208a187``'s
    conditions had left out)."""
    if not isinstance(model, Model):
        return
    engine, ranks = side.engine, max(math.prod(side.mesh_shape), 2)
    linears = model.linears()
    if not isinstance(engine, TP) and linears:
        for style in ("colwise", "rowwise"):
            tp = TP(plan=((linears[0][0], style),))
            change = f"{type(engine).__name__} -> TP ({linears[0][0]} {style})"
            yield f"{name}_engine", change, or_none(side, engine=tp, mesh_shape=(1, ranks), wrap=())
    if not isinstance(engine, PP) and len(model.root.children) >= 2:
        change = f"{type(engine).__name__} -> PP (2 stages)"
        yield f"{name}_engine", change, or_none(side, engine=PP(), mesh_shape=(2, 1), wrap=())


def neighbours(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    """``(dimension, change, neighbour)`` for each one-step change of ``case``; ``neighbour`` is None where the
    change makes no valid case (the data model refuses it)."""
    for name in ("save", "load"):
        side = getattr(case, name)
        for dimension, change, changed in (
            *_side_neighbours(name, side),
            *_parallel_neighbours(name, side, case.model),
        ):
            yield dimension, change, or_none(case, **{name: changed})
    yield from _case_neighbours(case)
    yield from _model_neighbours(case)


def appended(root, leaf):
    """``root`` with ``leaf`` after its last child, of the same container kind (so every path it had stays)."""
    if isinstance(root, (Sequential, Block)):
        return type(root)((*root.children, leaf))
    return Sequential((root, leaf))


def scaled(model: Model, factor: int) -> Model | None:
    """``model`` with the input width and every Linear's output width multiplied by ``factor`` (norms and
    attention follow the width they are fed; a head count that divided a width divides its multiple)."""

    def scale(node):
        if isinstance(node, (Sequential, Block)):
            return type(node)(tuple(scale(child) for child in node.children))
        if isinstance(node, Linear):
            return attrs.evolve(node, out_features=node.out_features * factor)
        return node

    try:
        return attrs.evolve(model, input_width=model.input_width * factor, root=scale(model.root))
    except (ValueError, TypeError):
        return None
