"""How one side shards, saves or loads: its engine (FSDP1, FSDP2, DDP, a plain module), mesh, wrapping and state-dict options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Union

from attrs import field, frozen
from attrs.validators import ge, in_, instance_of

from shardfuzz.case._validators import ints
from shardfuzz.case.tree import _sorted_unique_types

#: ``local`` (FSDP1 only, not hybrid): the model as FSDP1's ``LOCAL_STATE_DICT`` (each rank's
#: flat-parameter shard, a ShardedTensor without padding), the optimizer state dict sharded.
STATE_DICT_TYPES = ("sharded", "full", "local")

#: How a side gets and sets its state dict. ``combined``: ``get_state_dict``/``set_state_dict``
#: (model and optimizer in one call); ``separate``: ``get_/set_model_state_dict`` then
#: ``get_/set_optimizer_state_dict``, as torchtune and torch's own broadcast tests call them.
STATE_DICT_APIS = ("combined", "separate")

#: When a side wraps its ``checkpointed`` leaves in ``checkpoint_wrapper`` (activation checkpointing,
#: which renames their parameters with ``_checkpoint_wrapped_module.``): not at all, before the engine
#: shards the model (torchtitan's order), or after (FSDP1's documented order).
ACTIVATION_CHECKPOINTING = ("none", "before", "after")

#: FSDP's mixed precision on a side (FSDP1 ``MixedPrecision``, FSDP2 ``MixedPrecisionPolicy``):
#: ``bf16`` parameters and gradient reduction in bfloat16; ``bf16-params`` parameters in bfloat16, the
#: reduction in float32; ``bf16-reduce`` the reverse. Either way the sharded parameters, the optimizer
#: state and so every state dict stay float32: that is what is saved and compared.
MIXED_PRECISION = ("none", "bf16", "bf16-params", "bf16-reduce")
#: The ``MIXED_PRECISION`` values that compute with bfloat16 parameters.
LOWERS_PARAMETERS = ("bf16", "bf16-params")

#: Where a side's ranks hold the model. ``cuda``: one GPU per rank, collectives on
#: those tensors over NCCL. A case may save on one and load on the other.
DEVICES = ("cpu", "cuda")


#: FSDP1's ``ShardingStrategy`` names; the hybrid ones shard within a row of a 2-D mesh
#: and replicate across rows.
FSDP1_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
HYBRID_STRATEGIES = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")

#: How FSDP1 chooses its inner units. ``set``: a lambda policy over ``Side.wrap``;
#: ``manual``: nested ``wrap()`` calls on ``Side.wrap`` inside ``enable_wrap``;
#: ``module-type``: ``ModuleWrapPolicy`` over ``module_types``; ``size-based``:
#: ``size_based_auto_wrap_policy`` with ``min_num_params``; ``always``: every module.
WRAP_POLICIES = ("set", "manual", "module-type", "size-based", "always")


class EngineKind:
    """What every engine says about itself; the engines are ``ENGINE_CLASSES``. How an engine wraps a module
    is ``sharding.shard_module``, from the engine's fields; how it is drawn, ``strategies/engines.py``."""

    __slots__ = ()

    #: Its coverage dimensions (each side's, prefixed ``save_``/``load_``); "n/a" on a side of another engine.
    dimension_names: ClassVar[tuple[str, ...]] = ()

    def dimension_values(self) -> dict[str, str]:
        """Its values along ``dimension_names``."""
        return {}

    @property
    def needs_mesh(self) -> bool:
        """Whether it shards on a DeviceMesh (else on the side's process group)."""
        return False

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        """How many pieces each parameter is cut into on a side of this mesh (1 where it is replicated)."""
        return mesh_shape[-1]

    @property
    def shards_listed_modules(self) -> bool:
        """Whether ``Side.wrap`` names the units it shards (FSDP2; FSDP1 under a listing policy; FSDP2 across
        ``dp`` beside tensor or pipeline parallelism)."""
        return False


@frozen
class FSDP1(EngineKind):
    """``FullyShardedDataParallel`` with a sharding strategy and a wrap policy."""

    use_orig_params: bool = field(default=True, validator=instance_of(bool))
    sharding_strategy: str = field(default="FULL_SHARD", validator=in_(FSDP1_STRATEGIES))
    wrap_policy: str = field(default="set", validator=in_(WRAP_POLICIES))
    module_types: tuple[str, ...] = field(default=(), converter=_sorted_unique_types)
    min_num_params: int = field(default=0, validator=[instance_of(int), ge(0)])

    def __attrs_post_init__(self):
        if (self.wrap_policy == "module-type") != bool(self.module_types):
            raise ValueError("module_types is given exactly when wrap_policy is 'module-type'")
        if (self.wrap_policy == "size-based") != (self.min_num_params > 0):
            raise ValueError("min_num_params > 0 is given exactly when wrap_policy is 'size-based'")

    dimension_names: ClassVar[tuple[str, ...]] = ("fsdp1_strategy", "fsdp1_wrap_policy", "fsdp1_use_orig_params")

    def dimension_values(self) -> dict[str, str]:
        return {
            "fsdp1_strategy": self.sharding_strategy.lower(),
            "fsdp1_wrap_policy": self.wrap_policy,
            "fsdp1_use_orig_params": str(self.use_orig_params).lower(),
        }

    @property
    def needs_mesh(self) -> bool:
        return self.hybrid  # HSDP's 2-D mesh; the other strategies take the group

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        return 1 if self.sharding_strategy == "NO_SHARD" else mesh_shape[-1]

    @property
    def hybrid(self) -> bool:
        return self.sharding_strategy in HYBRID_STRATEGIES

    @property
    def wraps_listed_modules(self) -> bool:
        """Whether ``Side.wrap`` chooses the inner units (else the policy does)."""
        return self.wrap_policy in ("set", "manual")

    @property
    def shards_listed_modules(self) -> bool:
        return self.wraps_listed_modules


@frozen
class FSDP2(EngineKind):
    """``fully_shard`` on each module in ``Side.wrap`` (innermost first), then the root.

    On a 2-D mesh this is HSDP: replicate across dim 0, shard along dim 1.
    ``shard_dim`` 1 shards every parameter of 2 or more dimensions on its dim 1
    (through ``shard_placement_fn``); 1-D parameters stay on dim 0.
    """

    reshard_after_forward: bool = field(default=True, validator=instance_of(bool))
    shard_dim: int = field(default=0, validator=in_((0, 1)))

    dimension_names: ClassVar[tuple[str, ...]] = ("fsdp2_reshard_after_forward", "fsdp2_shard_dim")

    def dimension_values(self) -> dict[str, str]:
        return {
            "fsdp2_reshard_after_forward": str(self.reshard_after_forward).lower(),
            "fsdp2_shard_dim": str(self.shard_dim),
        }

    @property
    def needs_mesh(self) -> bool:
        return True

    @property
    def shards_listed_modules(self) -> bool:
        return True

    def dim_for(self, ndim: int) -> int:
        """The dimension a parameter of ``ndim`` dimensions is sharded on."""
        return min(self.shard_dim, ndim - 1)


@frozen
class DDP(EngineKind):
    """``DistributedDataParallel``: every rank holds the whole model."""

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        return 1


@frozen
class Unsharded(EngineKind):
    """A plain module on one rank with no parallel wrapper: the non-distributed end."""

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        return 1


@frozen
class ZeRO(EngineKind):
    """DeepSpeed's ZeRO (``deepspeed.initialize``, the ``deepspeed`` target only): data parallelism over the side's
    ranks with the optimizer state partitioned (``stage`` 1), the gradients too (2), and the parameters too (3);
    ``bf16``: the model in bfloat16 with float32 master weights, which the checkpoint keeps; ``elastic``: ZeRO 1
    and 2's legacy elastic checkpoint format (``zero_optimization.elastic_checkpoint``: the optimizer state saved
    merged, not by partition; DeepSpeed calls it deprecated and unsupported for stage 3)."""

    stage: int = field(default=1, validator=in_((1, 2, 3)))
    bf16: bool = field(default=False, validator=instance_of(bool))
    elastic: bool = field(default=False, validator=instance_of(bool))

    dimension_names: ClassVar[tuple[str, ...]] = ("zero_stage", "zero_bf16", "zero_elastic")

    def __attrs_post_init__(self):
        if self.elastic and self.stage == 3:
            raise ValueError("ZeRO 3 has no elastic checkpoint: DeepSpeed warns it is deprecated and unsupported there")

    def dimension_values(self) -> dict[str, str]:
        return {
            "zero_stage": str(self.stage),
            "zero_bf16": str(self.bf16).lower(),
            "zero_elastic": str(self.elastic).lower(),
        }

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        return mesh_shape[-1] if self.stage == 3 else 1


#: How tensor parallelism splits a planned Linear: ``colwise`` its output features (weight and bias on
#: dim 0; the output all-gathered, ``ColwiseParallel(output_layouts=Replicate())``), ``rowwise`` its input
#: features (weight on dim 1, bias replicated; ``RowwiseParallel(input_layouts=Replicate())``). Replicated
#: inputs and outputs let any Linear of any tree be planned on its own, at any width.
TP_STYLES = ("colwise", "rowwise")
#: Expert parallelism, planned on an ``Experts`` leaf: its grouped experts' 3-D weights split on the expert
#: dimension across the same last mesh dimension (``Shard(0)``, by ``distribute_module``), the router not.
EXPERT_STYLE = "experts"


def _plan(entries: Iterable) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({(str(path), str(style)) for path, style in entries}))


def _check_plan(plan: tuple[tuple[str, str], ...]) -> None:
    """A tensor-parallel plan's styles are known, and each planned module takes one."""
    unknown = {style for _, style in plan} - {*TP_STYLES, EXPERT_STYLE}
    if unknown:
        raise ValueError(f"plan styles {sorted(unknown)} are not among {[*TP_STYLES, EXPERT_STYLE]}")
    paths = [path for path, _ in plan]
    if len(set(paths)) != len(paths):
        raise ValueError("a planned Linear takes one style")


@frozen
class TP(EngineKind):
    """Tensor parallelism: ``parallelize_module`` splits each planned Linear (``plan``: ``(leaf path,
    style)``, ``TP_STYLES``) across the last dimension of a 2-D ``(dp, tp)`` mesh; expert parallelism splits
    each planned ``Experts`` leaf (style ``EXPERT_STYLE``) across the same dimension, which is then ``ep`` to
    them (torchtitan's experts-on-tp layout; a plan of experts alone is expert parallelism). With ``fsdp``,
    ``fully_shard`` then shards every parameter across ``dp`` (FSDP2 + TP, torchtitan's 2-D layout: a
    planned weight sharded twice, ``_StridedShard`` over ``Shard``); without, ``dp`` is 1. Every rank of
    a ``tp`` group trains on the same batch."""

    plan: tuple[tuple[str, str], ...] = field(default=(), converter=_plan)
    fsdp: bool = field(default=False, validator=instance_of(bool))
    reshard_after_forward: bool = field(default=True, validator=instance_of(bool))

    @plan.validator
    def _styles(self, attribute, value):
        _check_plan(value)

    dimension_names: ClassVar[tuple[str, ...]] = ("tp_fsdp", "tp_styles", "tp_ep")

    def dimension_values(self) -> dict[str, str]:
        styles = {style for _, style in self.plan} - {EXPERT_STYLE}
        return {
            "tp_fsdp": str(self.fsdp).lower(),
            "tp_styles": "both" if len(styles) > 1 else next(iter(styles), "none"),
            "tp_ep": str(any(style == EXPERT_STYLE for _, style in self.plan)).lower(),
        }

    @property
    def needs_mesh(self) -> bool:
        return True

    @property
    def shards_listed_modules(self) -> bool:
        return self.fsdp


@frozen
class PP(EngineKind):
    """Pipeline parallelism: the root's children cut into contiguous stages (``sharding.stage_bounds``) along
    the first dimension of a 2-D ``(pp, dp)`` mesh, each rank keeping its stage's children under their names in
    the whole model (the others ``nn.Identity``, as torchtitan keeps model parts) and training it under
    ``torch.distributed.pipelining`` (GPipe, one microbatch). With ``fsdp``, ``fully_shard`` shards each stage
    across ``dp`` (its listed units, then its root); without, ``dp`` is 1. Every stage of a ``pp`` group
    trains on the same batch; the optimizer state is handed over flattened (keyed by name, as torchtitan's
    model parts merge it). With a ``plan`` (as ``TP``'s), tensor parallelism inside each stage instead: the mesh is
    ``(pp, tp)``, each stage splits its own planned modules across ``tp`` (torchtitan's PP + TP; with FSDP too it
    would need a third mesh dimension, not drawn), and every rank trains on the same batch."""

    fsdp: bool = field(default=False, validator=instance_of(bool))
    reshard_after_forward: bool = field(default=True, validator=instance_of(bool))
    plan: tuple[tuple[str, str], ...] = field(default=(), converter=_plan)

    @plan.validator
    def _styles(self, attribute, value):
        _check_plan(value)
        if value and self.fsdp:
            raise ValueError("PP with tensor parallelism inside its stages runs on (pp, tp): fsdp False")

    dimension_names: ClassVar[tuple[str, ...]] = ("pp_fsdp", "pp_tp")

    def dimension_values(self) -> dict[str, str]:
        return {"pp_fsdp": str(self.fsdp).lower(), "pp_tp": str(bool(self.plan)).lower()}

    @property
    def needs_mesh(self) -> bool:
        return True

    def shard_count(self, mesh_shape: tuple[int, ...]) -> int:
        return mesh_shape[-1] if self.fsdp or self.plan else 1

    @property
    def shards_listed_modules(self) -> bool:
        return self.fsdp


#: The engines, the registry the rest of shardfuzz reads: a new engine is added here.
ENGINE_CLASSES: tuple[type[EngineKind], ...] = (FSDP1, FSDP2, DDP, Unsharded, TP, PP, ZeRO)
Engine = Union[FSDP1, FSDP2, DDP, Unsharded, TP, PP, ZeRO]  # cattrs tags each by class name


def _sorted_unique(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(paths)))


@frozen
class Side:
    """One end of the round-trip: the engine, its wrap set, the mesh, the state-dict type.

    ``mesh_shape`` is 1-D, or 2-D ``(replicas, shards)`` for HSDP (FSDP2 on a 2-D
    mesh, FSDP1 with a hybrid strategy). A side on ``n`` ranks runs on ranks ``0..n-1``.
    ``device`` ``cuda`` puts rank ``i``'s model on GPU ``i`` (left out of the JSON when ``cpu``).
    ``cpu_offload`` and ``broadcast_from_rank0`` are the ``StateDictOptions`` fields of that
    name for this side's state dict (left out of the JSON when False); the second loads a
    full state dict that only rank 0 holds, so it needs ``state_dict`` ``full``.
    ``state_dict_api`` is one of ``STATE_DICT_APIS`` (left out of the JSON when ``combined``).
    ``activation_checkpointing`` (``ACTIVATION_CHECKPOINTING``) wraps the leaves named in
    ``checkpointed`` before or after sharding; ``compiled`` runs the sharded model through
    ``torch.compile`` (the ``eager`` backend: what matters is the ``_orig_mod.`` prefix and the
    parameters' identity, not generated code). Both rename parameters on this side only: the
    checkpoint must load across a change of wrappers exactly or fail loudly (each left out of
    the JSON at its default). ``meta_init``: the side builds its model on the meta device and
    materializes it (``to_empty``, then each module's ``reset_parameters``) where its engine needs it,
    as seed 000 and torchtitan build large models (left out of the JSON when False).
    ``mixed_precision`` (``MIXED_PRECISION``, FSDP1 and FSDP2 sides) and ``offload_params`` (FSDP2's
    ``CPUOffloadPolicy``: sharded parameters, gradients and the optimizer step on the CPU) change
    how it trains, not what it saves (each left out of the JSON at its default). ``batchnorm_fp32``: on an
    FSDP2 side whose mixed precision lowers the parameters to bfloat16, each BatchNorm is its own
    ``fully_shard`` unit with a float32 policy whose outputs are cast back to bfloat16: FSDP2's policy has
    no buffer dtype, and this is the workaround its maintainers give (pytorch/torchtitan#674). The
    strategies draw it wherever it applies, so the fuzzer tests the supported way; False (the default,
    left out of the JSON) keeps corpus entries of the limitation itself reproducing.
    """

    engine: Engine = field(validator=instance_of(ENGINE_CLASSES))
    mesh_shape: tuple[int, ...] = field(converter=ints)
    wrap: tuple[str, ...] = field(default=(), converter=_sorted_unique)
    state_dict: str = field(default="sharded", validator=in_(STATE_DICT_TYPES))
    device: str = field(default="cpu", validator=in_(DEVICES))
    cpu_offload: bool = field(default=False, validator=instance_of(bool))
    broadcast_from_rank0: bool = field(default=False, validator=instance_of(bool))
    state_dict_api: str = field(default="combined", validator=in_(STATE_DICT_APIS))
    activation_checkpointing: str = field(default="none", validator=in_(ACTIVATION_CHECKPOINTING))
    checkpointed: tuple[str, ...] = field(default=(), converter=_sorted_unique)
    compiled: bool = field(default=False, validator=instance_of(bool))
    meta_init: bool = field(default=False, validator=instance_of(bool))
    mixed_precision: str = field(default="none", validator=in_(MIXED_PRECISION))
    offload_params: bool = field(default=False, validator=instance_of(bool))
    batchnorm_fp32: bool = field(default=False, validator=instance_of(bool))

    @mesh_shape.validator
    def _mesh(self, attribute, value):
        if len(value) not in (1, 2) or not all(isinstance(v, int) and v >= 1 for v in value):
            raise ValueError(f"mesh_shape must be one or two positive ints, got {value!r}")

    def __attrs_post_init__(self):
        engine, two_d = self.engine, len(self.mesh_shape) == 2
        if isinstance(engine, Unsharded) and self.mesh_shape != (1,):
            raise ValueError(f"an Unsharded side runs on one rank, mesh_shape (1,), not {self.mesh_shape}")
        if isinstance(engine, FSDP1) and engine.hybrid != two_d:
            raise ValueError(
                f"FSDP1 {engine.sharding_strategy} needs a {'2' if engine.hybrid else '1'}-D "
                f"mesh_shape, not {self.mesh_shape}"
            )
        if isinstance(engine, (DDP, Unsharded)) and two_d:
            raise ValueError(f"{type(engine).__name__} takes a 1-D mesh_shape, not {self.mesh_shape}")
        if isinstance(engine, TP) and not (two_d and (engine.fsdp or self.mesh_shape[0] == 1)):
            raise ValueError(
                f"TP runs on a 2-D (dp, tp) mesh_shape, with dp 1 unless fsdp shards across it, not {self.mesh_shape}"
            )
        if isinstance(engine, TP) and not engine.plan:
            raise ValueError("TP needs a plan: at least one Linear split colwise or rowwise, or experts split")
        if isinstance(engine, PP):
            self._check_pipeline(engine)
        if self.wrap and not engine.shards_listed_modules:
            raise ValueError(f"wrap lists modules, but {engine!r} does not shard listed modules")
        if self.broadcast_from_rank0 and self.state_dict != "full":
            raise ValueError("broadcast_from_rank0 loads a full state dict: it needs state_dict 'full'")
        if self.state_dict == "local" and not (isinstance(engine, FSDP1) and not engine.hybrid):
            raise ValueError(
                f"state_dict 'local' is FSDP1's LOCAL_STATE_DICT, which takes no DeviceMesh: it needs "
                f"an FSDP1 engine with a non-hybrid strategy, not {engine!r}"
            )
        if (self.activation_checkpointing == "none") != (not self.checkpointed):
            raise ValueError("checkpointed names leaves exactly when activation_checkpointing is 'before' or 'after'")
        if self.mixed_precision != "none" and not isinstance(engine, (FSDP1, FSDP2)):
            raise ValueError(f"mixed_precision is FSDP's: {type(engine).__name__} takes 'none'")
        if self.mixed_precision != "none" and isinstance(engine, TP):
            raise ValueError("mixed_precision is drawn for FSDP1 and FSDP2 sides only")
        if self.batchnorm_fp32 and not (isinstance(engine, FSDP2) and self.mixed_precision in LOWERS_PARAMETERS):
            raise ValueError(
                "batchnorm_fp32 is FSDP2's workaround for bfloat16 parameters: it needs an FSDP2 engine and "
                f"mixed_precision in {LOWERS_PARAMETERS}, not {type(engine).__name__} with {self.mixed_precision!r}"
            )
        if self.offload_params and not isinstance(engine, FSDP2):
            raise ValueError(f"offload_params is FSDP2's CPUOffloadPolicy: {type(engine).__name__} takes False")
        if self.state_dict == "local" and (self.cpu_offload or self.state_dict_api != "combined"):
            raise ValueError(
                "a 'local' side gets its model state from FSDP1 itself: no cpu_offload, state_dict_api 'combined'"
            )

    def _check_pipeline(self, engine: PP) -> None:
        two_d = len(self.mesh_shape) == 2
        if not (two_d and self.mesh_shape[0] >= 2 and (engine.fsdp or engine.plan or self.mesh_shape[1] == 1)):
            raise ValueError(
                "PP runs on a 2-D (pp, dp) mesh_shape with pp >= 2 stages, dp 1 unless fsdp shards each stage "
                f"across it (or (pp, tp) with a plan), not {self.mesh_shape}"
            )
        if engine.plan and self.mesh_shape[1] < 2:
            raise ValueError(
                f"PP's plan splits modules across tp: a (pp, tp) mesh_shape with tp >= 2, not {self.mesh_shape}"
            )
        wrapped = [name for name in ("cpu_offload", "broadcast_from_rank0", "compiled") if getattr(self, name)]
        if wrapped or self.activation_checkpointing != "none":
            raise ValueError(
                "a pipeline stage is cut from the root's children and trained by its schedule: no activation "
                f"checkpointing, torch.compile, cpu_offload or broadcast_from_rank0 with PP (here: {wrapped or 'AC'})"
            )

    @property
    def world_size(self) -> int:
        n = 1
        for v in self.mesh_shape:
            n *= v
        return n

    @property
    def wrappers(self) -> dict:
        """How the side puts its model together around the engine, as ``sharding.wrap_and_shard`` and
        ``shard_module`` take it (and exported scripts write it)."""
        return {
            "activation_checkpointing": self.activation_checkpointing,
            "checkpointed": list(self.checkpointed),
            "compiled": self.compiled,
            "meta_init": self.meta_init,
            "mixed_precision": self.mixed_precision,
            "offload_params": self.offload_params,
            "batchnorm_fp32": self.batchnorm_fp32,
        }

    @property
    def wrap_innermost_first(self) -> list[str]:
        """``wrap`` in the order the engines need: a module before any of its ancestors."""
        return sorted(self.wrap, key=lambda path: -path.count("."))
