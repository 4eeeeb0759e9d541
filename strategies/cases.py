"""``cases()``: the composition of every dimension into one Case."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.case import Case, Model, Side
from shardfuzz.unsupported import excluded
from shardfuzz.strategies._helpers import check_int
from shardfuzz.strategies.engines import engines, wrap_sets
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
    """One end of the round-trip for ``model``."""
    return st.builds(
        Side,
        engine=engines(names=engine_names),
        mesh_shape=mesh_shapes(max_size=max_world_size),
        wrap=wrap_sets(model),
        state_dict=state_dict_types(),
    )


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
