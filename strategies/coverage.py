"""Every value each labelled dimension (``case.dimensions``) can take under these strategies.

The coverage test and the ``run`` report compare what a campaign reached with
this, so a value the strategies stop drawing (a capability probe gone wrong, a
filter that rejects a whole branch) shows up as unreached instead of going unseen.
"""

from __future__ import annotations

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    ACTIVATION_CHECKPOINTING,
    CHECKS,
    DEVICES,
    DTYPES,
    FSDP1_STRATEGIES,
    GRADLESS,
    HYBRID_STRATEGIES,
    LOAD_MUTATIONS,
    MIXED_PRECISION,
    OPTIMIZER_CLASSES,
    RESUMES,
    SCHEDULERS,
    STATE_DICT_APIS,
    STATE_DICT_TYPES,
    WRAP_POLICIES,
    Dcp,
    LowBitAdamW,
    coverage_dimensions,
    coverage_values,
)
from shardfuzz.strategies._helpers import check_choices, check_int
from shardfuzz.strategies.modules import MAX_CHILDREN
from shardfuzz.targets.support import TargetSupport

__all__ = ["offered_values"]

_BOOLS = frozenset({"true", "false"})


def offered_values(
    *, max_world_size: int = 4, max_steps: int = 3, devices=("cpu",), support: TargetSupport | None = None
) -> dict[str, frozenset[str]]:
    """``{dimension: values}`` that ``cases(max_world_size=..., max_steps=..., devices=..., support=...)``
    can reach here (with ``support``, a target's: what it excludes is not offered)."""
    check_int("max_world_size", max_world_size, minimum=1)
    check_int("max_steps", max_steps, minimum=0)
    devices = check_choices("devices", devices, DEVICES)
    caps = capabilities()
    engines = set(caps.engines)
    if support is not None:
        return _narrowed(
            offered_values(max_world_size=max_world_size, max_steps=max_steps, devices=devices),
            support,
            max_world_size=max_world_size,
            max_steps=max_steps,
        )
    not_fsdp1 = {"n/a"} if engines - {"fsdp1"} else set()
    not_fsdp2 = {"n/a"} if engines - {"fsdp2"} else set()
    strategies = {s.lower() for s in FSDP1_STRATEGIES if caps.hsdp or s not in HYBRID_STRATEGIES}
    values: dict[str, set[str]] = {}
    for side in ("save", "load"):
        values.update(
            {
                f"{side}_engine": engines,
                f"{side}_device": set(devices),
                f"{side}_world_size": {str(n) for n in range(1, max_world_size + 1)},
                f"{side}_mesh": {"1d", "2d"} if caps.hsdp and engines & {"fsdp1", "fsdp2", "tp", "pp"} else {"1d"},
                f"{side}_state_dict": set(STATE_DICT_TYPES) - (set() if caps.local_state_dict else {"local"}),
                f"{side}_wrapped": {"none", "some"},
                f"{side}_uneven_split": set(_BOOLS) if max_world_size > 1 else {"false"},
                f"{side}_empty_shard": set(_BOOLS) if max_world_size > 1 else {"false"},
                f"{side}_cpu_offload": set(_BOOLS),
                f"{side}_state_dict_api": set(STATE_DICT_APIS),
                f"{side}_activation_checkpointing": (
                    set(ACTIVATION_CHECKPOINTING) if caps.activation_checkpointing else {"none"}
                ),
                f"{side}_compiled": set(_BOOLS) if caps.compile else {"false"},
                f"{side}_meta_init": set(_BOOLS),
                f"{side}_mixed_precision": set(MIXED_PRECISION) if engines & {"fsdp1", "fsdp2"} else {"none"},
                f"{side}_offload_params": set(_BOOLS) if "fsdp2" in engines else {"false"},
            }
        )
        if "fsdp1" in engines:
            values[f"{side}_fsdp1_strategy"] = strategies | not_fsdp1
            values[f"{side}_fsdp1_wrap_policy"] = set(WRAP_POLICIES) | not_fsdp1
            values[f"{side}_fsdp1_use_orig_params"] = set(_BOOLS) | not_fsdp1
        if "tp" in engines:
            not_tp = {"n/a"} if engines - {"tp"} else set()
            values[f"{side}_tp_fsdp"] = set(_BOOLS) | not_tp if max_world_size > 1 else {"n/a"}
            styles = {"colwise", "rowwise", "both"} | ({"none"} if caps.expert_parallel else set())  # none: EP alone
            values[f"{side}_tp_styles"] = styles | not_tp if max_world_size > 1 else {"n/a"}
            ep = set(_BOOLS) if caps.expert_parallel else {"false"}
            values[f"{side}_tp_ep"] = ep | not_tp if max_world_size > 1 else {"n/a"}
        if "pp" in engines:
            not_pp = {"n/a"} if engines - {"pp"} else set()
            stages = range(2, min(max_world_size, MAX_CHILDREN) + 1)  # a stage per root child at most
            values[f"{side}_pp_degree"] = {str(n) for n in stages} | not_pp
            values[f"{side}_pp_fsdp"] = set(_BOOLS) | not_pp if max_world_size > 1 else {"n/a"}
            # tensor parallelism inside the stages: a (pp, tp) mesh of 2 x 2 ranks at least
            inside = set(_BOOLS) if max_world_size >= 4 and "tp" in caps.engines else {"false"}
            values[f"{side}_pp_tp"] = inside | not_pp if max_world_size > 1 else {"n/a"}
        if "zero" in engines:
            not_zero = {"n/a"} if engines - {"zero"} else set()
            values[f"{side}_zero_stage"] = {"1", "2", "3"} | not_zero
            values[f"{side}_zero_bf16"] = set(_BOOLS) | not_zero
            values[f"{side}_zero_elastic"] = set(_BOOLS) | not_zero
        if "fsdp2" in engines:
            values[f"{side}_fsdp2_reshard_after_forward"] = set(_BOOLS) | not_fsdp2
            values[f"{side}_fsdp2_shard_dim"] = ({"0", "1"} if caps.fsdp2_shard_dim else {"0"}) | not_fsdp2
    values.update(
        {
            "resharded": set(_BOOLS),
            "optimizer": {kind().torch_class().lower() for kind in OPTIMIZER_CLASSES if kind is not LowBitAdamW}
            | {LowBitAdamW(bits=bits).torch_class().lower() for bits in caps.low_bit_optimizers},
            "optimizer_state": {"none", "some"},
            "param_groups": {"1", "2"},
            "steps": {str(n) for n in range(max_steps + 1)},
            "flatten_optimizer_state_dict": set(_BOOLS) if caps.flatten_optimizer_state_dict else {"true"},
            "depth": {"2", "3", "4+"},
            "linears": {"1", "2", "3", "4+"},
            "frozen": {"none", "some"},
            **{dimension: coverage_values(labels) for dimension, labels in coverage_dimensions().items()},
            "dtype": set(DTYPES),
            "storage": set(caps.storages),
            "writer_single_file_per_rank": set(_BOOLS) | {"n/a"} if caps.writer_options else {"true", "n/a"},
            "writer_threads": {"1", "2+", "n/a"} if caps.writer_options else {"1", "n/a"},
            "writer_sync_files": set(_BOOLS) | {"n/a"} if caps.writer_options else {"true", "n/a"},
            "broadcast_from_rank0": (
                set(_BOOLS)
                if caps.broadcast_from_rank0 and caps.flatten_optimizer_state_dict and engines - {"fsdp1"}
                else {"false"}
            ),
            "ignore_frozen_params": set(_BOOLS) if caps.ignore_frozen_params else {"false"},
            "load_mutation": {"none", *LOAD_MUTATIONS},
            **{f"check_{name}": set(_BOOLS) for name in CHECKS},
            "training_state": {"none", *SCHEDULERS},
            "grad_scaler": set(_BOOLS),
            # held where some engine's sharded state dict is the parameters themselves (not FSDP1's)
            "save_held_state_dict": set(_BOOLS) if caps.held_state_dicts and engines - {"fsdp1"} else {"false"},
            "load_held_state_dict": set(_BOOLS) if caps.held_state_dicts and engines - {"fsdp1"} else {"false"},
            "resumes": {str(n) for n in RESUMES},
            "lenient_load": set(_BOOLS) if caps.lenient_loads else {"false"},
            "gradless_params": set(GRADLESS),
            "empty_param_group": set(_BOOLS),
            "group_without_rank0": set(_BOOLS) if max_world_size > 1 else {"false"},
            "late_param_group": set(_BOOLS),
            "second_save": set(_BOOLS),
        }
    )
    state_dicts = set(values["save_state_dict"])
    for side in ("save", "load"):  # through_target: an engine and a state-dict type that went through the target
        values[f"through_{side}"] = {
            f"{engine} {kind}" for engine in engines for kind in state_dicts if kind != "local" or engine == "fsdp1"
        }
    return {name: frozenset(v) for name, v in values.items()}


def _narrowed(values: dict, support: TargetSupport, *, max_world_size: int, max_steps: int) -> dict[str, frozenset]:
    """``values`` less what ``support`` excludes."""
    values = {name: set(v) for name, v in values.items()}
    offered = set(values["save_engine"])
    if support.whole_pool and not support.per_side_pools and max_world_size > 1:
        offered.discard("unsharded")
    by_side = {side: {name for name in offered if support.allows_engine(name, side=side)} for side in ("save", "load")}
    engines = by_side["save"] | by_side["load"]
    for name in [n for n in values if n.endswith(("_fsdp1_strategy", "_fsdp1_wrap_policy", "_fsdp1_use_orig_params"))]:
        if "fsdp1" not in engines:
            values[name] = {"n/a"}
        elif engines == {"fsdp1"}:
            values[name].discard("n/a")
    for name in [n for n in values if "_tp_" in n]:
        if "tp" not in engines:
            values[name] = {"n/a"}
    for name in [n for n in values if n.endswith("_pp_tp")]:
        if "tp" not in engines:  # tensor parallelism inside the stages is the tp engine's splitting
            values[name] -= {"true"}
    for engine in ("fsdp2", "zero", "pp"):  # an engine's own dimensions: n/a without it, never n/a with it alone
        for name in [n for n in values if f"_{engine}_" in n]:
            kept = by_side.get(name.split("_")[0], engines)
            if engine not in kept:
                values[name] = {"n/a"}
            elif kept == {engine}:
                values[name].discard("n/a")
    state_dicts = set(values["save_state_dict"]) & set(support.state_dicts or values["save_state_dict"])
    if "fsdp1" not in engines:
        state_dicts.discard("local")
    for side in ("save", "load"):
        values[f"{side}_engine"] = by_side[side]
        if not engines & {"fsdp1", "fsdp2"}:
            values[f"{side}_mixed_precision"] = {"none"}
        if "fsdp2" not in engines:
            values[f"{side}_offload_params"] = {"false"}
        values[f"{side}_state_dict"] = state_dicts
        if support.whole_pool:
            if not support.per_side_pools:
                values[f"{side}_world_size"] = {str(max_world_size)}
            values["group_without_rank0"] = {"false"}
        if not support.hybrid:
            values[f"{side}_mesh"] = {"1d"}
            values[f"{side}_fsdp1_strategy"] = {
                s for s in values.get(f"{side}_fsdp1_strategy", ()) if "hybrid" not in s
            }
        if not support.options:
            values[f"{side}_cpu_offload"] = {"false"}
        values[f"through_{side}"] = {
            v for v in values[f"through_{side}"] if v.split()[0] in by_side[side] and v.split()[1] in state_dicts
        }
    if not support.options:
        values["broadcast_from_rank0"] = values["ignore_frozen_params"] = {"false"}
    if not support.training_state:
        values["training_state"], values["grad_scaler"] = {"none"}, {"false"}
    if not support.held_state_dicts or not engines - {"fsdp1"}:
        values["save_held_state_dict"] = values["load_held_state_dict"] = {"false"}
    if not support.lenient_loads:
        values["lenient_load"] = {"false"}
    if not support.flatten:
        values["flatten_optimizer_state_dict"] = {"false"}
    if support.min_steps:
        values["steps"] = {str(n) for n in range(support.min_steps, max(max_steps, support.min_steps) + 1)}
    if not support.storages:
        for name, value in Dcp().dimensions().items():
            values[name] = {value}
    if by_side["save"] == {"zero"}:
        _plain_zero(values)
    return {name: frozenset(v) for name, v in values.items() if v}


#: What the rule ``zero-side-plain-loop`` leaves a ZeRO case: each dimension's one value (a float32 model on the
#: CPU without wrappers, a torch optimizer, one round-trip of the plain loop, a compatible load, no DSD checks).
PLAIN_ZERO = {
    "dtype": "float32",
    "gradless_params": "never",
    "empty_param_group": "false",
    "late_param_group": "false",
    "second_save": "false",
    "resumes": "1",
    "load_mutation": "none",
    "check_api-parity": "false",
    "check_full-offload": "false",
}
PLAIN_ZERO_SIDE = {"meta_init": "false", "compiled": "false", "activation_checkpointing": "none"}


def _plain_zero(values: dict) -> None:
    """Narrow ``values`` to what a target of ZeRO sides alone can run (``unsupported``'s plain-loop rule)."""
    for name, value in PLAIN_ZERO.items():
        values[name] = {value}
    for side in ("save", "load"):  # and DeepSpeed's engine over the whole module, on a 1-D group
        values[f"{side}_mesh"], values[f"{side}_wrapped"] = {"1d"}, {"none"}
        for name, value in PLAIN_ZERO_SIDE.items():
            values[f"{side}_{name}"] = {value}
    values["optimizer"] = {name for name in values["optimizer"] if "bit" not in name}
