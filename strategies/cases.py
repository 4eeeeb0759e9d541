"""``cases()``: the composition of every dimension into one Case."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.capabilities import capabilities
from shardfuzz.case import FSDP1, FSDP2, Case, Model, Side, Unsharded
from shardfuzz.unsupported import excluded
from shardfuzz.strategies._helpers import check_choices, check_int, factorisations
from shardfuzz.strategies.engines import TWO_D_ENGINES, engines, wrap_sets
from shardfuzz.strategies.modules import models
from shardfuzz.strategies.options import (
    checks,
    flatten_optimizer_state_dict,
    load_mutations,
    optimizer_steps,
    optimizers,
    param_groups,
    state_dict_types,
)
from shardfuzz.strategies.topology import mesh_shapes

__all__ = ["cases", "sides"]


def sides(model: Model, *, max_world_size: int = 4, engine_names=None) -> st.SearchStrategy[Side]:
    """One end of the round-trip for ``model``: a mesh, an engine that runs on it, its units."""
    offered = check_choices("engine_names", engine_names, capabilities().engines)
    two_d = capabilities().hsdp and any(n in TWO_D_ENGINES for n in offered)

    @st.composite
    def draw_side(draw):
        mesh = draw(mesh_shapes(max_size=max_world_size, max_dims=2 if two_d else 1))
        engine = draw(engines(names=offered, mesh_dims=len(mesh)))
        if isinstance(engine, Unsharded):
            mesh = (1,)
        if isinstance(engine, FSDP1) and engine.hybrid:
            # Two known torch bugs, each kept under test by its corpus entry, would
            # otherwise eat campaigns: FSDP1 HSDP on a mesh that leaves out ranks of the
            # world hangs in get_state_dict (dbe8638ee6e07769), and a shard dimension of
            # size 1 never syncs the replicas (c0d72805f77a3917, which then sets off
            # hangs elsewhere). So FSDP1 HSDP meshes span the whole pool with shards >= 2.
            shapes = factorisations(max_world_size, min_shards=2) or [(1, max_world_size)]
            mesh = draw(st.sampled_from(shapes))
        elif isinstance(engine, FSDP1) and not capabilities().fsdp1_subgroups:
            mesh = (max_world_size,)  # see capabilities: FSDP1 on a subgroup hangs in this torch
        lists_units = isinstance(engine, FSDP2) or (isinstance(engine, FSDP1) and engine.wraps_listed_modules)
        return Side(engine=engine, mesh_shape=mesh, wrap=draw(wrap_sets(model)) if lists_units else (),
                    state_dict=draw(state_dict_types()))

    return draw_side()


def cases(
    *,
    max_world_size: int = 4,
    max_leaves: int = 6,
    max_width: int = 16,
    max_steps: int = 3,
    engine_names=None,
) -> st.SearchStrategy[Case]:
    """Round-trip cases whose sides each use at most ``max_world_size`` ranks.

    Save and load sides are drawn independently, so most cases reshard (other
    world size, other engine or other wrap set) between save and load.
    """
    check_int("max_world_size", max_world_size, minimum=1)
    check_int("max_leaves", max_leaves, minimum=1)
    check_int("max_width", max_width, minimum=1)
    check_int("max_steps", max_steps, minimum=0)

    @st.composite
    def draw_case(draw):
        model = draw(models(max_leaves=max_leaves, max_width=max_width))
        side = sides(model, max_world_size=max_world_size, engine_names=engine_names)
        return Case(
            model=model,
            save=draw(side),
            load=draw(side),
            optimizer=draw(optimizers()),
            steps=draw(optimizer_steps(max_steps=max_steps)),
            flatten_optimizer_state_dict=draw(flatten_optimizer_state_dict()),
            seed=draw(st.integers(0, 2**16)),
            checks=draw(checks()),
            param_groups=draw(param_groups()),
            load_mutation=draw(load_mutations()),
        )

    # The rules torch documents live in one place (``unsupported.CASE_RULES``); a
    # filter keeps them there rather than copying them into the draws above.
    return draw_case().filter(lambda case: excluded(case) is None)
