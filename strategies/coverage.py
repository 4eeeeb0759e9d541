"""Every value each labelled dimension (``case.dimensions``) can take under these strategies.

The coverage test and the ``run`` report compare what a campaign reached with
this, so a value the strategies stop drawing (a capability probe gone wrong, a
filter that rejects a whole branch) shows up as unreached instead of going unseen.
"""

from __future__ import annotations

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    CHECKS,
    DEVICES,
    DTYPES,
    FSDP1_STRATEGIES,
    HYBRID_STRATEGIES,
    LOAD_MUTATIONS,
    OPTIMIZER_CLASSES,
    STATE_DICT_APIS,
    STATE_DICT_TYPES,
    WRAP_POLICIES,
    coverage_dimensions,
    coverage_values,
)
from shardfuzz.strategies._helpers import check_choices, check_int

__all__ = ["offered_values"]

_BOOLS = frozenset({"true", "false"})


def offered_values(*, max_world_size: int = 4, max_steps: int = 3, devices=("cpu",)) -> dict[str, frozenset[str]]:
    """``{dimension: values}`` that ``cases(max_world_size=..., max_steps=..., devices=...)`` can reach here."""
    check_int("max_world_size", max_world_size, minimum=1)
    check_int("max_steps", max_steps, minimum=0)
    devices = check_choices("devices", devices, DEVICES)
    caps = capabilities()
    engines = set(caps.engines)
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
                f"{side}_mesh": {"1d", "2d"} if caps.hsdp and engines & {"fsdp1", "fsdp2"} else {"1d"},
                f"{side}_state_dict": set(STATE_DICT_TYPES) - (set() if caps.local_state_dict else {"local"}),
                f"{side}_wrapped": {"none", "some"},
                f"{side}_uneven_split": set(_BOOLS) if max_world_size > 1 else {"false"},
                f"{side}_empty_shard": set(_BOOLS) if max_world_size > 1 else {"false"},
                f"{side}_cpu_offload": set(_BOOLS),
                f"{side}_state_dict_api": set(STATE_DICT_APIS),
            }
        )
        if "fsdp1" in engines:
            values[f"{side}_fsdp1_strategy"] = strategies | not_fsdp1
            values[f"{side}_fsdp1_wrap_policy"] = set(WRAP_POLICIES) | not_fsdp1
            values[f"{side}_fsdp1_use_orig_params"] = set(_BOOLS) | not_fsdp1
        if "fsdp2" in engines:
            values[f"{side}_fsdp2_reshard_after_forward"] = set(_BOOLS) | not_fsdp2
            values[f"{side}_fsdp2_shard_dim"] = ({"0", "1"} if caps.fsdp2_shard_dim else {"0"}) | not_fsdp2
    values.update(
        {
            "resharded": set(_BOOLS),
            "optimizer": {kind.__name__.lower() for kind in OPTIMIZER_CLASSES},
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
        }
    )
    return {name: frozenset(v) for name, v in values.items()}
