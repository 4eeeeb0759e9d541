"""Sharding engines and wrap policies, offered only where the installed torch has them."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    DDP,
    EXPERT_STYLE,
    FSDP1,
    FSDP1_STRATEGIES,
    FSDP2,
    HYBRID_STRATEGIES,
    MODULE_TYPES,
    PP,
    TP,
    TP_STYLES,
    WRAP_POLICIES,
    Leaf,
    Model,
    Unsharded,
    ZeRO,
    leaves_a_rank_empty,
)
from shardfuzz.strategies._helpers import check_choices, check_int, weighted

__all__ = [
    "ENGINE_WEIGHTS",
    "engines",
    "fsdp1_engines",
    "fsdp2_engines",
    "tp_plans",
    "wrap_sets",
    "side_wrappers",
    "ENGINE_NAMES",
]

ENGINE_NAMES = ("fsdp1", "fsdp2", "ddp", "unsharded", "tp", "pp", "zero")
TWO_D_ENGINES = ("fsdp1", "fsdp2")  # the engines that take a 2-D mesh (HSDP)


def fsdp1_engines(*, hybrid: bool = False) -> st.SearchStrategy[FSDP1]:
    """FSDP1 with a sharding strategy (a hybrid one iff ``hybrid``, for a 2-D mesh) and a wrap policy."""
    strategies = HYBRID_STRATEGIES if hybrid else tuple(s for s in FSDP1_STRATEGIES if s not in HYBRID_STRATEGIES)

    @st.composite
    def draw(draw):
        policy = draw(st.sampled_from(WRAP_POLICIES))
        return FSDP1(
            use_orig_params=draw(st.booleans()),
            sharding_strategy=draw(st.sampled_from(strategies)),
            wrap_policy=policy,
            module_types=draw(st.lists(st.sampled_from(MODULE_TYPES), min_size=1, unique=True))
            if policy == "module-type"
            else (),
            # a Linear here has 1 to 272 parameters: thresholds below and above both happen
            min_num_params=draw(st.integers(1, 300)) if policy == "size-based" else 0,
        )

    return draw()


def fsdp2_engines() -> st.SearchStrategy[FSDP2]:
    """``fully_shard`` with ``reshard_after_forward`` on or off, on dim 0 or (where offered) dim 1."""
    dims = [0, 1] if capabilities().fsdp2_shard_dim else [0]
    return st.builds(FSDP2, reshard_after_forward=st.booleans(), shard_dim=st.sampled_from(dims))


#: How often each engine is drawn, relative to the others. An unsharded side has the fewest values of its own; a
#: pipeline needs a root of two children or more (a side of another engine where the model has fewer), so it is
#: weighted up to be drawn as often as the others. (``st.one_of`` with a builder repeated would not weight it: it
#: drops a branch it already holds, see ``weighted``.)
ENGINE_WEIGHTS = {"fsdp1": 2, "fsdp2": 2, "ddp": 2, "unsharded": 1, "tp": 2, "pp": 4, "zero": 4}


def engines(*, names=None, mesh_dims: int = 1) -> st.SearchStrategy:
    """An engine among ``names`` (default: every engine the installed torch offers) that runs
    on a mesh of ``mesh_dims`` dimensions (2: only FSDP1's hybrid strategies and FSDP2), by ``ENGINE_WEIGHTS``."""
    chosen = check_choices("names", names, capabilities().engines)
    check_int("mesh_dims", mesh_dims, minimum=1)
    if mesh_dims == 2:
        chosen = tuple(n for n in chosen if n in TWO_D_ENGINES)
        check_choices("names (for a 2-D mesh)", chosen, TWO_D_ENGINES)
    builders = {
        "fsdp1": lambda: fsdp1_engines(hybrid=mesh_dims == 2),
        "fsdp2": fsdp2_engines,
        "ddp": lambda: st.just(DDP()),
        "unsharded": lambda: st.just(Unsharded()),
        # the plan is the model's: drawn with it (tp_plans), after the engine
        "tp": lambda: st.builds(
            TP, plan=st.just((("0", "colwise"),)), fsdp=st.booleans(), reshard_after_forward=st.booleans()
        ),
        # the stages are the model's root children: the mesh is drawn with the model
        "pp": lambda: st.builds(PP, fsdp=st.booleans(), reshard_after_forward=st.booleans()),
        # DeepSpeed's engine: only a target that names it draws it (TargetSupport.allows_engine)
        # elastic: ZeRO 1 and 2's legacy checkpoint format, 1 side in 4 (shrinks to the default, rigid one)
        "zero": lambda: st.sampled_from((1, 2, 3)).flatmap(
            lambda stage: st.builds(
                ZeRO,
                stage=st.just(stage),
                bf16=st.booleans(),
                elastic=st.just(False) if stage == 3 else st.sampled_from((False, False, False, True)),
            )
        ),
    }
    return weighted(*((ENGINE_WEIGHTS[n], builders[n]()) for n in chosen))


def wrap_sets(model: Model) -> st.SearchStrategy[tuple[str, ...]]:
    """Submodules (by FQN) sharded as units of their own, besides the root."""
    paths = model.submodule_paths()
    return st.lists(st.sampled_from(paths), unique=True).map(tuple)


def side_wrappers(
    model: Model, *, checkpointing_one_in: int = 5, compile_one_in: int = 12, meta_one_in: int = 6
) -> st.SearchStrategy[dict]:
    """How a side puts its model together around the engine, as ``Side`` fields: activation
    checkpointing of some leaves, before or after sharding (about 1 side in ``checkpointing_one_in``),
    ``torch.compile`` (1 in ``compile_one_in``: a compiled case costs a trace), where the installed
    torch offers each, and construction on the meta device (1 in ``meta_one_in``); shrinks to none."""
    check_int("checkpointing_one_in", checkpointing_one_in, minimum=1)
    check_int("compile_one_in", compile_one_in, minimum=1)
    check_int("meta_one_in", meta_one_in, minimum=1)
    meta = st.sampled_from([False] * (meta_one_in - 1) + [True])
    caps = capabilities()
    orders = ["none"] * (checkpointing_one_in - 1) + ["before", "after"] * (checkpointing_one_in > 1)
    order = st.sampled_from(orders if caps.activation_checkpointing else ["none"])
    compiled = st.sampled_from([False] * (compile_one_in - 1) + [True]) if caps.compile else st.just(False)
    # Not a BatchNorm: recomputing its forward in the backward updates its running statistics again,
    # a side effect torch.utils.checkpoint documents as unsupported (the sides' statistics would part).
    recomputable = [fqn for fqn, node, _ in model.walk() if isinstance(node, Leaf) and not node.running_statistics]
    if not recomputable:
        order = st.just("none")
    leaves = st.lists(st.sampled_from(recomputable or ["-"]), min_size=1, unique=True)

    @st.composite
    def draw(draw):
        chosen = draw(order)
        return {
            "activation_checkpointing": chosen,
            "checkpointed": tuple(draw(leaves)) if chosen != "none" else (),
            "compiled": draw(compiled),
            "meta_init": draw(meta),
        }

    return draw()


def tp_plans(model: Model, *, tp: int = 1) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Tensor-parallel plans over ``model``: some of its Linears, each split colwise or rowwise, or every
    Linear split colwise and rowwise in turn along the model (Megatron's pairs: a column split, then a row
    split); that one over the Linears that give every ``tp`` rank rows both ways, where two do (one that leaves
    a rank empty meets known torch bugs, which the other form draws and steering then avoids, taking the
    pairs with it). Where the model has mixture-of-experts leaves and expert parallelism is on, some of them
    split on the expert dimension (style ``experts``), beside such a plan or alone (expert parallelism only)."""
    linears = [fqn for fqn, _ in model.linear_nodes()]
    wide = [
        fqn
        for fqn, fed, out, _ in model.linears()
        if not (leaves_a_rank_empty(fed, tp) or leaves_a_rank_empty(out, tp))
    ]
    paths = st.lists(st.sampled_from(linears), min_size=1, unique=True).map(
        lambda chosen: [fqn for fqn in linears if fqn in chosen]  # forward order
    )
    each_its_own = paths.flatmap(
        lambda chosen: st.tuples(*(st.tuples(st.just(fqn), st.sampled_from(TP_STYLES)) for fqn in chosen))
    )
    paired = wide if len(wide) >= 2 else linears
    in_turn = tuple((fqn, TP_STYLES[i % 2]) for i, fqn in enumerate(paired))  # as Megatron plans
    linear_plans = st.one_of(each_its_own, st.just(in_turn)).map(tuple)
    experts = [fqn for fqn, _ in model.experts_nodes()] if capabilities().expert_parallel else []
    if not experts:
        return linear_plans
    expert_plans = st.lists(st.sampled_from(experts), min_size=1, unique=True).map(
        lambda chosen: tuple((fqn, EXPERT_STYLE) for fqn in experts if fqn in chosen)
    )
    return st.one_of(linear_plans, expert_plans, st.tuples(linear_plans, expert_plans).map(lambda p: p[0] + p[1]))
