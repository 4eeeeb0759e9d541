"""Combinations torch documents as unsupported: the one place that lists them, a reason for each.

Two kinds of rule:

- ``CASE_RULES`` look at a Case before it runs. The strategies never draw a case
  one of them excludes, and the pool answers ``unsupported`` for such a case
  (from an old corpus or a hand-written test) without running it.
- ``RULES`` match a rank's error by exception type and message pattern, for limits
  torch checks at run time. Only an error raised where torch checks its arguments
  on purpose (not a crash, not a mismatch: those are never excused).

A case that hits one of these is not a bug and not a pass: its verdict becomes
``unsupported``, it is counted in reports, never shrunk or saved to the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
from attrs import frozen

from shardfuzz.case import DDP, FSDP1, FSDP2, LOWERS_PARAMETERS, Case, LowBitAdamW, Unsharded, ZeRO, shard_count
from shardfuzz.verdict import Verdict

__all__ = [
    "CaseRule",
    "CASE_RULES",
    "Rule",
    "RULES",
    "classify",
    "copies_its_state_dict",
    "exact_world_size",
    "excluded",
    "needs_other_world",
]


@frozen
class CaseRule:
    name: str
    reason: str
    applies: Callable[[Case], bool]


def _sides(case: Case):
    return (case.save, case.load)


CASE_RULES: tuple[CaseRule, ...] = (
    CaseRule(
        "flat-parameter-groups",
        "FSDP1 with use_orig_params=False hands the optimizer one FlatParameter per unit, so "
        "parameters of one unit cannot sit in different param groups (torch documents "
        "use_orig_params=True as the way to have per-parameter param groups)",
        lambda case: (
            (case.param_groups > 1 or case.loop.late_group)
            and any(isinstance(s.engine, FSDP1) and not s.engine.use_orig_params for s in _sides(case))
        ),
    ),
    CaseRule(
        "fsdp2-uneven-shard-dim",
        "fully_shard supports uneven sharding on dim 0 only: a shard_placement_fn that shards "
        "on dim 1 needs that dim divisible by the shard count (NotImplementedError 'FSDP does "
        "not support uneven sharding on dim 1')",
        lambda case: _fsdp2_uneven_on_dim1(case),
    ),
    CaseRule(
        "fsdp-scalar-parameter",
        "FSDP1 and fully_shard both refuse 0-D parameters on purpose (ValueError \"FSDP doesn't "
        'support scalar parameters. Change 1.scale to a 1D tensor with numel equal to 1", and '
        "'fully_shard doesn't support ...' likewise), and the root is always sharded, so a model "
        "with a Scale leaf runs on DDP and unsharded sides only",
        lambda case: (
            "Scale" in case.model.leaf_kinds()
            and any(isinstance(s.engine, (FSDP1, FSDP2)) or getattr(s.engine, "fsdp", False) for s in _sides(case))
        ),
    ),
    CaseRule(
        "fsdp1-shared-parameter-across-units",
        "FSDP1 documents 'limited support for shared parameters' (pytorch/pytorch#77724): a tied weight "
        "must stay inside one unit. A wrap policy that can wrap a Tied leaf's two Linears apart (always, "
        "size-based, module-type with Linear) splits it, and training then fails ('mat2 must be a matrix') "
        "or, with use_orig_params=False, the optimizer state comes back incomplete",
        lambda case: "Tied" in case.model.leaf_kinds() and any(_fsdp1_wraps_linears_apart(s) for s in _sides(case)),
    ),
    CaseRule(
        "fsdp1-multihead-attention-out-proj-unit",
        "FSDP1 unshards a unit's parameters only around that unit's own forward, and documents that a "
        "wrapped module's parameters must not be used outside it: nn.MultiheadAttention reads "
        "out_proj.weight itself (it never calls out_proj), so a policy that can make its out_proj (a "
        "Linear) a unit of its own (always, size-based, module-type with Linear) trains on the flat "
        "shard ('mat2 must be a matrix', or an in-place error on a view of it)",
        lambda case: (
            "MultiheadAttention" in case.model.leaf_kinds() and any(_fsdp1_wraps_linears_apart(s) for s in _sides(case))
        ),
    ),
    CaseRule(
        "fsdp1-meta-init-shared-parameter",
        "FSDP1 materializes a model built on the meta device itself, module by module (to_empty, "
        "reset_parameters), and to_empty makes every parameter anew: a weight shared by two modules "
        "comes back as two before FSDP1 flattens them, with no hook to tie them again (a Tied leaf "
        "then trains and saves two weights)",
        lambda case: (
            "Tied" in case.model.leaf_kinds() and any(s.meta_init and isinstance(s.engine, FSDP1) for s in _sides(case))
        ),
    ),
    CaseRule(
        "fsdp1-compile-flat-parameters",
        "FSDP1 documents use_orig_params=True as required for torch.compile: with FlatParameters the "
        "compiled model's parameters are not the original ones (DSD then asserts 'Expected 1 FQN for "
        "_orig_mod._fsdp_wrapped_module._flat_param')",
        lambda case: any(
            s.compiled and isinstance(s.engine, FSDP1) and not s.engine.use_orig_params for s in _sides(case)
        ),
    ),
    CaseRule(
        "gradless-flat-parameters-continuation",
        "a gradless loop sets the first module's gradients to None, and FSDP1 with use_orig_params=False hands the "
        "model FlatParameters, so there the first FlatParameter (another set of parameters, the whole unit's) goes "
        "without its gradient: the two sides of a continuation check would train different parameters (run T's "
        "cc570f41: DDP saving, FSDP1 loading with a wrap policy, a continuation that differs by design)",
        lambda case: (
            case.loop.gradless != "never"
            and "continuation" in case.checks
            and any(isinstance(s.engine, FSDP1) and not s.engine.use_orig_params for s in _sides(case))
        ),
    ),
    CaseRule(
        "broadcast-from-rank0-fsdp1",
        "StateDictOptions documents that broadcast_from_rank0 'currently only supports DTensor, not the "
        "legacy ShardedTensor': FSDP1's optimizer path hands the empty state dict of ranks > 0 to "
        "optim_state_dict_to_load unbroadcast (KeyError 'state' / 'param_groups')",
        lambda case: case.load.broadcast_from_rank0 and isinstance(case.load.engine, FSDP1),
    ),
    CaseRule(
        "fsdp1-mixed-precision-batchnorm-without-auto-wrap-policy",
        "FSDP1's MixedPrecision keeps BatchNorm modules in float32 (_module_classes_to_ignore) only 'when using an "
        "auto_wrap_policy ... If auto_wrap_policy is not specified, then this does not do anything' (its docstring): "
        "with the wrap set or nested wrap() and bfloat16 parameters, a BatchNorm gets bfloat16 weights beside float32 "
        "statistics and its first step raises 'expected scalar type BFloat16 but found Float' (met by a 600 s run in "
        "a second round-trip's training, 2026-12-05)",
        lambda case: (
            case.model.has_batch_norm
            and any(
                isinstance(s.engine, FSDP1) and s.engine.wraps_listed_modules and s.mixed_precision in LOWERS_PARAMETERS
                for s in _sides(case)
            )
        ),
    ),
    CaseRule(
        "zero-side-plain-loop",
        "a ZeRO side is DeepSpeed's engine, drawn for the deepspeed target in its plain form so far: a float32 model "
        "built on the CPU without wrappers (no meta device, compile, activation checkpointing or FSDP mixed "
        "precision), a torch optimizer, one round-trip whose training goes through engine.backward and step (no "
        "gradient set to None between them, no param group empty or added later, no second save), a compatible "
        "load, and oracles that read its state by name (not DSD's api-parity or full-offload checks)",
        lambda case: any(isinstance(s.engine, ZeRO) for s in _sides(case)) and _outside_plain_zero(case),
    ),
    CaseRule(
        "zero-stage-3-crossing",
        "DeepSpeed documents its universal checkpoint for a change of tensor, pipeline, sequence or data parallel "
        "degree (Megatron-DeepSpeed's universal-checkpointing examples), not of ZeRO stage across 3: measured on "
        "DeepSpeed 0.19.8, a ZeRO 3 load of a stage 1 or 2 checkpoint fails in check_ckpt_list (AssertionError: "
        "no model-states files of ZeRO 3's names)",
        lambda case: len({_zero_stage(s) == 3 for s in _sides(case) if isinstance(s.engine, ZeRO)}) == 2,
    ),
    CaseRule(
        "held-state-dict-is-a-copy",
        "DSD does not promise that a state dict aliases the parameters, and some are copies by design: "
        "measured on torch 2.13, FSDP1's sharded and full model state dicts, FSDP2's full one and any "
        "cpu_offload one held from build still hold the initial weights after training. Trainers hold the "
        "sharded state dicts that are the parameters themselves (torchtitan's ModelWrapper: FSDP2, TP, DDP, "
        "a plain module), and those are the sides a held state dict is drawn on",
        lambda case: any(held and copies_its_state_dict(side) for side, held in _held_sides(case)),
    ),
)


def _zero_stage(side) -> int:
    return side.engine.stage


def _outside_plain_zero(case: Case) -> bool:
    loop = case.loop
    return (
        getattr(case.model, "dtype", "float32") != "float32"
        or isinstance(case.optimizer, LowBitAdamW)
        or loop.gradless != "never"
        or loop.empty_group
        or loop.late_group
        or loop.second_save
        or loop.resumes > 1
        or case.load_mutation is not None
        or bool({"api-parity", "full-offload"} & set(case.checks))
        or any(
            s.meta_init or s.compiled or s.activation_checkpointing != "none" or s.mixed_precision != "none"
            for s in _sides(case)
        )
    )


def _held_sides(case: Case):
    return ((case.save, case.loop.save_held), (case.load, case.loop.load_held))


def copies_its_state_dict(side) -> bool:
    """Whether ``side``'s model state dict is a copy of its parameters (so a held one goes stale)."""
    gathers = side.state_dict == "full" and not isinstance(side.engine, (DDP, Unsharded))
    return isinstance(side.engine, FSDP1) or gathers or side.cpu_offload


#: Why a load side that broadcasts from rank 0 must span the whole process group.
BROADCAST_SPANS_WORLD = (
    "broadcast-from-rank0-whole-world: set_state_dict(broadcast_from_rank0=True) broadcasts on the "
    "default process group (DSD takes no group argument), so the load side must span every rank of it; "
    "on a rank subgroup the ranks outside it never join the broadcast and it hangs"
)


FSDP1_SPANS_WORLD = (
    "fsdp1-whole-world: this torch's get_state_dict gathers FSDP1 optimizer state on the default process "
    "group (DSD has no _get_fsdp_process_group), so an FSDP1 side must span every rank of it; on a rank "
    "subgroup the ranks outside it never join the gather and it hangs (shardfuzz capabilities: fsdp1_subgroups)"
)


def _fsdp1_side_sizes(case: Case) -> set[int]:
    """World sizes of the FSDP1 sides that must span the whole pool on this torch (none where FSDP1 takes a subgroup)."""
    from shardfuzz.capabilities import capabilities

    sizes = {side.world_size for side in _sides(case) if isinstance(side.engine, FSDP1)}
    return sizes if sizes and not capabilities().fsdp1_subgroups else set()


def exact_world_size(case: Case) -> int | None:
    """The size of process group ``case`` must run in, where it needs one exactly (else None)."""
    if case.load.broadcast_from_rank0:
        return case.load.world_size
    return max(_fsdp1_side_sizes(case), default=None)


def needs_other_world(case: Case, world_size: int) -> str:
    """Why ``case`` cannot run in a process group of ``world_size`` ranks, or ''."""
    if case.loop.ranks_from and exact_world_size(case):
        why = BROADCAST_SPANS_WORLD if case.load.broadcast_from_rank0 else FSDP1_SPANS_WORLD
        return f"{why} (the case's sides start at global rank {case.loop.ranks_from}, so none spans it)"
    if case.load.broadcast_from_rank0 and case.load.world_size != world_size:
        return f"{BROADCAST_SPANS_WORLD} (the load side has {case.load.world_size} of {world_size} ranks)"
    narrower = sorted(n for n in _fsdp1_side_sizes(case) if n != world_size)
    if narrower:
        return f"{FSDP1_SPANS_WORLD} (an FSDP1 side has {narrower[0]} of {world_size} ranks)"
    return ""


def _fsdp1_wraps_linears_apart(side) -> bool:
    engine = side.engine
    return isinstance(engine, FSDP1) and (
        engine.wrap_policy in ("always", "size-based")
        or (engine.wrap_policy == "module-type" and "Linear" in engine.module_types)
    )


def _fsdp2_uneven_on_dim1(case: Case) -> bool:
    dim1_sizes = [shape[1] for shape in case.model.parameter_shapes().values() if len(shape) >= 2]
    for side in _sides(case):
        if (
            isinstance(side.engine, FSDP2)
            and side.engine.shard_dim == 1
            and any(n % shard_count(side) for n in dim1_sizes)
        ):
            return True
    return False


def excluded(case: Case, rules: tuple[CaseRule, ...] = CASE_RULES) -> CaseRule | None:
    """The first case rule that excludes ``case``, or None."""
    for rule in rules:
        if rule.applies(case):
            return rule
    return None


@frozen
class Rule:
    name: str
    reason: str
    types: tuple[str, ...]
    message: re.Pattern = attrs.field(converter=lambda p: re.compile(p, re.IGNORECASE))

    def matches(self, error) -> bool:
        return error.type in self.types and bool(self.message.search(error.message))


RULES: tuple[Rule, ...] = (
    Rule(
        "not-implemented",
        "torch raises NotImplementedError with 'not supported' / 'only supports' where it checks a "
        "feature it has not implemented (FSDP2 on non-contiguous parameters, flattening an optimizer "
        "state that is not a tensor/int/float/dict, resharding DTensor parameters to a smaller mesh). "
        "That is a documented limit, not a defect.",
        ("NotImplementedError",),
        r"not (yet )?support|only supports|not implemented",
    ),
    Rule(
        "empty-param-group",
        "get_optimizer_state_dict/set_optimizer_state_dict check on purpose that at most one param "
        "group is empty ('DSD only support exactly one param group with zero parameters')",
        ("ValueError",),
        r"param groups that have zero parameters",
    ),
    Rule(
        "fsdp1-mixed-requires-grad",
        "FSDP1 with use_orig_params=False flattens each unit's parameters into one FlatParameter, "
        "which has one requires_grad: it checks on purpose that a unit's parameters are all frozen "
        "or all trainable ('Must flatten tensors with uniform requires_grad when use_orig_params=False'; "
        "with an auto-wrap policy, earlier: '... has both parameters with requires_grad=True and False. "
        "FSDP does not support wrapping such modules when use_orig_params=False'; torch documents "
        "use_orig_params=True for mixed frozen parameters)",
        ("ValueError",),
        r"(uniform `?requires_grad`? when|does not support wrapping such modules when) `?use_orig_params=False",
    ),
    Rule(
        "multiple-optimizers",
        "get_state_dict/set_state_dict document that one module with several optimizers is not supported",
        ("ValueError", "RuntimeError"),
        r"multiple optimizers are not supported",
    ),
)


def classify(verdict: Verdict, rules: tuple[Rule, ...] = RULES) -> Verdict:
    """``verdict`` as ``unsupported`` when its root error (lowest rank) matches a rule; else unchanged.

    Peers of the failing rank often report only an echo (a closed connection), so
    the root decides, as it does for the signature.
    """
    if verdict.status != "error" or not verdict.errors:
        return verdict
    root = min(verdict.errors, key=lambda e: e.rank)
    for rule in rules:
        if rule.matches(root):
            return attrs.evolve(verdict, status="unsupported", detail=f"{rule.name}: {rule.reason}")
    return verdict
