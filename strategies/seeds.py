"""The five seed tests' scenarios (../shared/seeds) as explicit Cases, named after them.

The property test runs each as an ``@example``, so they run on every test run,
whatever Hypothesis draws. Where a seed does something shardfuzz does not model
yet, the comment says what stands in for it.
"""

from __future__ import annotations

from shardfuzz.case import FSDP1, FSDP2, SGD, Adam, Block, Case, Dcp, Linear, Model, Sequential, Side

__all__ = ["SEED_SCENARIOS"]


def _chain(*widths: int) -> Model:
    """``Linear(w0, w1) -> Linear(w1, w2) -> ...`` in a Sequential."""
    return Model(widths[0], Sequential([Linear(w) for w in widths[1:]]))


_EVEN = _chain(5, 8, 4, 12)  # 003's even and uneven widths
_UNEVEN = _chain(5, 10, 15, 30, 5)
_DOUBLE_NESTED = Model(4, Block([Block([Linear(4), Linear(4)]), Linear(4)]))

SEED_SCENARIOS: dict[str, Case] = {
    # 000 test_fsdp_model_state: FSDP1 Linear(8, 8), sharded state dict, loaded into a second
    # FSDP1 model on (a) the same group, (b) a rank subgroup (shardfuzz's subgroups are the
    # prefix ranks 0..n-1, not 000's even/odd split). Both models are built on the meta device, as
    # 000's are (FSDP1 materializes them with each module's reset_parameters).
    "000-fsdp1-sharded-same-group": Case(
        model=_chain(8, 8),
        save=Side(FSDP1(), (4,), meta_init=True),
        load=Side(FSDP1(), (4,), meta_init=True),
        optimizer=SGD(),
        steps=1,
    ),
    "000-fsdp1-sharded-onto-subgroup": Case(
        model=_chain(8, 8),
        save=Side(FSDP1(), (4,), meta_init=True),
        load=Side(FSDP1(), (2,), meta_init=True),
        optimizer=SGD(),
        steps=1,
    ),
    # 001 test_fsdp_dsd: FSDP2 on every child and the root of an MLP stack of widths 2..5 with
    # reshard_after_forward=False; a full state dict with cpu_offload (the full-offload check);
    # FSDP1 (use_orig_params, always_wrap_policy, Adam) saved and loaded into FSDP2.
    "001-fsdp2-nested-mlp-full-cpu-offload": Case(
        model=_chain(2, 3, 4, 5),
        save=Side(FSDP2(reshard_after_forward=False), (2,), wrap=["0", "1", "2"], state_dict="full"),
        load=Side(FSDP2(reshard_after_forward=False), (2,), wrap=["0", "1", "2"]),
        optimizer=Adam(),
        steps=1,
        checks=["full-offload"],
    ),
    "001-fsdp1-always-wrap-to-fsdp2-full": Case(
        model=_chain(2, 3, 4, 5),
        save=Side(FSDP1(wrap_policy="always"), (2,), state_dict="full"),
        load=Side(FSDP2(), (2,), wrap=["0", "1", "2"], state_dict="full"),
        optimizer=Adam(),
        steps=1,
    ),
    "001-fsdp1-always-wrap-to-fsdp2-sharded": Case(
        model=_chain(2, 3, 4, 5),
        save=Side(FSDP1(wrap_policy="always"), (2,)),
        load=Side(FSDP2(), (2,), wrap=["0", "1", "2"]),
        optimizer=Adam(),
        steps=1,
    ),
    # 002 test_distributed_checkpoint: FSDP1 nested wrap() of a double-nested model, LOCAL_STATE_DICT
    # and SHARDED_STATE_DICT through FileSystemWriter/Reader (LOCAL with use_orig_params=False: with
    # True it is a known torch bug, corpus 0c0c634ac9cc5487).
    "002-fsdp1-nested-wrap-sharded": Case(
        model=_DOUBLE_NESTED,
        save=Side(FSDP1(wrap_policy="manual"), (2,), wrap=["a", "a.a"]),
        load=Side(FSDP1(wrap_policy="manual"), (2,), wrap=["a", "a.a"]),
        optimizer=SGD(),
        steps=1,
    ),
    "002-fsdp1-nested-wrap-local": Case(
        model=_DOUBLE_NESTED,
        save=Side(FSDP1(use_orig_params=False, wrap_policy="manual"), (2,), wrap=["a", "a.a"], state_dict="local"),
        load=Side(FSDP1(use_orig_params=False, wrap_policy="manual"), (2,), wrap=["a", "a.a"], state_dict="local"),
        optimizer=SGD(),
        steps=1,
        storage=Dcp(api="legacy"),
    ),
    # 003 test_hsdp_checkpoint: FSDP1 HYBRID_SHARD on a (2, world/2) mesh, even and uneven widths,
    # Adam; the step after the save (the continuation check) then reload; HSDP loaded into FSDP1
    # on a 1-D mesh.
    "003-fsdp1-hsdp-even": Case(
        model=_EVEN,
        save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2)),
        load=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2)),
        optimizer=Adam(),
        steps=1,
        checks=["continuation"],
    ),
    "003-fsdp1-hsdp-uneven": Case(
        model=_UNEVEN,
        save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2)),
        load=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2)),
        optimizer=Adam(),
        steps=1,
        checks=["continuation"],
    ),
    "003-fsdp1-hsdp-to-fsdp1-1d": Case(
        model=_UNEVEN,
        save=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2)),
        load=Side(FSDP1(), (4,)),
        optimizer=Adam(),
        steps=1,
    ),
    # 004 test_fully_shard_optim_checkpoint: a module-type wrap policy against wrapper FSDP on the
    # same model, Adam; FSDP.optim_state_dict and optim_state_dict_to_load + load_state_dict must
    # reproduce the optimizer state (the api-parity check). 004's composable fully_shard is gone
    # from recent torch; FSDP2 on two submodules only stands in for it on the load side.
    "004-fsdp1-module-type-optim-parity": Case(
        model=_chain(4, 6, 6, 3),
        save=Side(FSDP1(wrap_policy="module-type", module_types=["Linear"]), (2,)),
        load=Side(FSDP2(), (2,), wrap=["0", "2"]),
        optimizer=Adam(),
        steps=1,
        checks=["api-parity"],
    ),
}
