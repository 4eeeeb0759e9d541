"""The Case: one round-trip scenario as plain, JSON-serialisable data.

A Case says *what* to build, save and load; it never says how. The strategies
draw Cases, the ranks run them, the corpus stores them. This module imports
nothing from torch, so it is cheap to load anywhere.

Variant fields (a module-tree node, an engine, an optimizer) are tagged unions:
each variant is its own frozen class and its JSON form carries a ``"kind"`` tag.
Adding a variant means adding a class here and to the matching ``Union``.
"""

from __future__ import annotations

import json
from typing import Union

import attrs
import cattrs
from attrs import field, frozen
from attrs.validators import ge, in_, instance_of, le, optional
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

__all__ = [
    "SCHEMA_VERSION",
    "CHECKS",
    "LOAD_MUTATIONS",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "OPTIMIZER_CLASSES",
    "optimizer_groups",
    "Block",
    "Case",
    "DDP",
    "DEVICES",
    "FSDP1",
    "FSDP1_STRATEGIES",
    "FSDP2",
    "MODULE_TYPES",
    "Unsharded",
    "WRAP_POLICIES",
    "Linear",
    "LayerNorm",
    "BatchNorm",
    "Conv",
    "Embedding",
    "Scale",
    "Tied",
    "DTYPES",
    "LEAF_CLASSES",
    "leaves",
    "has_trainable_linear",
    "map_first_linear",
    "Model",
    "SGD",
    "Sequential",
    "Side",
    "Dcp",
    "TorchSave",
    "DcpToTorchSave",
    "STORAGE_CLASSES",
    "DCP_APIS",
    "describe_structure_error",
    "dimensions",
    "shard_count",
    "dumps",
    "from_dict",
    "loads",
    "to_dict",
]

SCHEMA_VERSION = 1
#: ``local`` (FSDP1 only, not hybrid): the model as FSDP1's ``LOCAL_STATE_DICT`` (each rank's
#: flat-parameter shard, a ShardedTensor without padding), the optimizer state dict sharded.
STATE_DICT_TYPES = ("sharded", "full", "local")

#: How a side gets and sets its state dict. ``combined``: ``get_state_dict``/``set_state_dict``
#: (model and optimizer in one call); ``separate``: ``get_/set_model_state_dict`` then
#: ``get_/set_optimizer_state_dict``, as torchtune and torch's own broadcast tests call them.
STATE_DICT_APIS = ("combined", "separate")

#: Where a side's ranks hold the model. ``cuda``: one GPU per rank, collectives on
#: those tensors over NCCL. A case may save on one and load on the other.
DEVICES = ("cpu", "cuda")

#: Optional oracles a case can ask for (each costs collectives; see ``oracles.py``).
CHECKS = ("continuation", "api-parity", "full-offload")

#: Ways to make the load side's model incompatible with the checkpoint; the
#: load must then fail loudly. ``wider``: the first Linear gets one more output.
#: ``extra-layer``: the root gets one more Linear, a key the checkpoint lacks.
LOAD_MUTATIONS = ("wider", "extra-layer")


_POSITIVE_INT = [instance_of(int), ge(1)]  # attrs names the field in its messages


# --- the module tree -------------------------------------------------------


@frozen
class Linear:
    """``nn.Linear`` whose input width is the previous layer's output width.

    ``frozen``: its weight and bias have ``requires_grad=False`` (no gradient, no
    optimizer state, still in the model's state dict); left out of the JSON when False.
    """

    out_features: int = field(validator=_POSITIVE_INT)
    bias: bool = field(default=True, validator=instance_of(bool))
    frozen: bool = field(default=False, validator=instance_of(bool))


@frozen
class LayerNorm:
    """``nn.LayerNorm`` over the previous layer's width: a 1-D weight and bias."""


@frozen
class BatchNorm:
    """``nn.BatchNorm1d`` over the previous layer's width: a 1-D weight and bias, and the
    buffers ``running_mean``, ``running_var`` and the 0-D int64 ``num_batches_tracked``."""


@frozen
class Conv:
    """``nn.Conv1d``/``nn.Conv2d`` from the width to the width, applied to the features as
    channels of a length-1 signal: a 3-D (or 4-D) weight ``(width, width, k[, k])``."""

    dims: int = field(default=1, validator=in_((1, 2)))
    kernel_size: int = field(default=1, validator=in_((1, 3)))  # 3: padding 1 keeps the length
    bias: bool = field(default=True, validator=instance_of(bool))


@frozen
class Embedding:
    """``nn.Embedding(num_embeddings, input_width)``: only as the model's first leaf, which then
    takes token indices in ``[0, num_embeddings)`` instead of features."""

    num_embeddings: int = field(validator=_POSITIVE_INT)


@frozen
class Scale:
    """A 0-D parameter ``scale`` (drawn from the seed) times the input, plus a non-persistent
    buffer ``shift`` (a constant, so absent from every state dict and never loaded)."""


@frozen
class Tied:
    """Two ``nn.Linear(width, width)`` named ``a`` and ``b``, run in turn, that share one weight
    (``b.weight is a.weight``, as an LM head shares its embedding's): one parameter under two
    names, whose state dicts hold it under both. Each has its own bias if ``bias``."""

    bias: bool = field(default=True, validator=instance_of(bool))


#: The modules a tree's leaves may be; only a Linear changes the width.
LEAF_CLASSES = (Linear, LayerNorm, BatchNorm, Conv, Embedding, Scale, Tied)

#: Parameter dtypes of a whole model (``Model.dtype``); float32 unless drawn otherwise.
DTYPES = ("float32", "float64", "bfloat16")


def _non_empty(instance, attribute, value):
    if not value:
        raise ValueError(f"{type(instance).__name__} needs at least one child")


@frozen
class Sequential:
    """``nn.Sequential`` over its children (named ``0``, ``1``, ...)."""

    children: tuple[Node, ...] = field(converter=tuple, validator=_non_empty)


@frozen
class Block:
    """A custom container: children are attributes ``a``, ``b``, ... run in order."""

    children: tuple[Node, ...] = field(converter=tuple, validator=_non_empty)


Node = Union[Linear, LayerNorm, BatchNorm, Conv, Embedding, Scale, Tied, Sequential, Block]


def _sorted_unique_types(names) -> tuple[str, ...]:
    names = tuple(sorted(set(names)))
    unknown = set(names) - set(MODULE_TYPES)
    if unknown:
        raise ValueError(f"module_types {sorted(unknown)} are not among {list(MODULE_TYPES)}")
    return names


@frozen
class Model:
    """A module tree fed with inputs of width ``input_width``; the root is a container.

    ``dtype``: every parameter and buffer of floating type is cast to it (left out of
    the JSON when float32).
    """

    input_width: int = field(validator=_POSITIVE_INT)
    root: Sequential | Block = field(validator=instance_of((Sequential, Block)))
    dtype: str = field(default="float32", validator=in_(DTYPES))

    @root.validator
    def _trainable(self, attribute, value):
        if not has_trainable_linear(value):
            raise ValueError(
                "the model needs a Linear with frozen=False: training needs a gradient, "
                "and every width comes from a Linear"
            )
        later = [leaf for leaf in leaves(value)[1:] if isinstance(leaf, Embedding)]
        if later:
            raise ValueError("an Embedding may only be the model's first leaf (it takes token indices)")

    @property
    def num_embeddings(self) -> int:
        """The first leaf's vocabulary if it is an Embedding (the model takes indices), else 0."""
        first = leaves(self.root)[0]
        return first.num_embeddings if isinstance(first, Embedding) else 0

    def walk(self) -> list[tuple[str, Node, int]]:
        """Every module below the root as ``(fqn, node, input width)``, parents before children."""
        out: list[tuple[str, Node, int]] = []
        width = self.input_width

        def visit(node, path):
            nonlocal width
            if path:
                out.append((path, node, width))
            if isinstance(node, Linear):
                width = node.out_features
            elif not isinstance(node, LEAF_CLASSES):
                for name, child in child_items(node):
                    visit(child, f"{path}.{name}" if path else name)

        visit(self.root, "")
        return out

    def linear_nodes(self) -> list[tuple[str, Linear]]:
        """Every Linear as ``(fqn, node)`` in forward order."""
        return [(fqn, node) for fqn, node, _ in self.walk() if isinstance(node, Linear)]

    def frozen_paths(self) -> list[str]:
        """FQNs of the frozen Linears."""
        return [fqn for fqn, node in self.linear_nodes() if node.frozen]

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """Every Linear as ``(fqn, in_features, out_features, bias)`` in forward order."""
        return [
            (fqn, width, node.out_features, node.bias) for fqn, node, width in self.walk() if isinstance(node, Linear)
        ]

    def norms(self) -> list[tuple[str, str, int]]:
        """Every norm layer as ``(fqn, class name, width)`` in forward order."""
        return [
            (fqn, type(node).__name__, width)
            for fqn, node, width in self.walk()
            if isinstance(node, (LayerNorm, BatchNorm))
        ]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{parameter fqn: shape}`` of the unsharded model (buffers not included)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for fqn, node, width in self.walk():
            if isinstance(node, Linear):
                shapes[f"{fqn}.weight"] = (node.out_features, width)
                if node.bias:
                    shapes[f"{fqn}.bias"] = (node.out_features,)
            elif isinstance(node, (LayerNorm, BatchNorm)):
                shapes[f"{fqn}.weight"] = shapes[f"{fqn}.bias"] = (width,)
            elif isinstance(node, Conv):
                shapes[f"{fqn}.weight"] = (width, width) + (node.kernel_size,) * node.dims
                if node.bias:
                    shapes[f"{fqn}.bias"] = (width,)
            elif isinstance(node, Embedding):
                shapes[f"{fqn}.weight"] = (node.num_embeddings, width)
            elif isinstance(node, Scale):
                shapes[f"{fqn}.scale"] = ()
            elif isinstance(node, Tied):  # the shared weight once, under its first name
                shapes[f"{fqn}.a.weight"] = (width, width)
                if node.bias:
                    shapes[f"{fqn}.a.bias"] = shapes[f"{fqn}.b.bias"] = (width,)
        return shapes

    def leaf_kinds(self) -> set[str]:
        """The class names of the leaves (``Conv`` as ``Conv1d``/``Conv2d``)."""
        return {
            f"Conv{node.dims}d" if isinstance(node, Conv) else type(node).__name__
            for _, node, _ in self.walk()
            if isinstance(node, LEAF_CLASSES)
        }

    @property
    def output_width(self) -> int:
        return self.linears()[-1][2]

    @property
    def has_batch_norm(self) -> bool:
        return any(name == "BatchNorm" for _, name, _ in self.norms())

    def submodule_paths(self) -> list[str]:
        """FQNs of every module below the root, parents before children."""
        return [fqn for fqn, _, _ in self.walk()]

    def depth(self) -> int:
        def d(node):
            return 1 if isinstance(node, LEAF_CLASSES) else 1 + max(d(c) for c in node.children)

        return d(self.root)


def leaves(node) -> list[Node]:
    """The leaf modules under ``node`` (itself, if it is one), in forward order."""
    if isinstance(node, LEAF_CLASSES):
        return [node]
    return [leaf for child in node.children for leaf in leaves(child)]


def has_trainable_linear(node) -> bool:
    """Whether a Linear under ``node`` has ``frozen=False`` (training needs a gradient)."""
    return any(isinstance(leaf, Linear) and not leaf.frozen for leaf in leaves(node))


def child_items(node: Sequential | Block) -> list[tuple[str, Node]]:
    """The (attribute name, child) pairs a container is built with."""
    if isinstance(node, Sequential):
        return [(str(i), c) for i, c in enumerate(node.children)]
    return [(_block_name(i), c) for i, c in enumerate(node.children)]


def _block_name(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("a") + r) + name
    return name


# --- how one side shards, saves or loads ------------------------------------


#: FSDP1's ``ShardingStrategy`` names; the hybrid ones shard within a row of a 2-D mesh
#: and replicate across rows.
FSDP1_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
HYBRID_STRATEGIES = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")

#: How FSDP1 chooses its inner units. ``set``: a lambda policy over ``Side.wrap``;
#: ``manual``: nested ``wrap()`` calls on ``Side.wrap`` inside ``enable_wrap``;
#: ``module-type``: ``ModuleWrapPolicy`` over ``module_types``; ``size-based``:
#: ``size_based_auto_wrap_policy`` with ``min_num_params``; ``always``: every module.
WRAP_POLICIES = ("set", "manual", "module-type", "size-based", "always")
MODULE_TYPES = (
    "Linear",
    "Sequential",
    "Block",
    "LayerNorm",
    "BatchNorm",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "Scale",
    "Tied",
)


@frozen
class FSDP1:
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

    @property
    def hybrid(self) -> bool:
        return self.sharding_strategy in HYBRID_STRATEGIES

    @property
    def wraps_listed_modules(self) -> bool:
        """Whether ``Side.wrap`` chooses the inner units (else the policy does)."""
        return self.wrap_policy in ("set", "manual")


@frozen
class FSDP2:
    """``fully_shard`` on each module in ``Side.wrap`` (innermost first), then the root.

    On a 2-D mesh this is HSDP: replicate across dim 0, shard along dim 1.
    ``shard_dim`` 1 shards every parameter of 2 or more dimensions on its dim 1
    (through ``shard_placement_fn``); 1-D parameters stay on dim 0.
    """

    reshard_after_forward: bool = field(default=True, validator=instance_of(bool))
    shard_dim: int = field(default=0, validator=in_((0, 1)))

    def dim_for(self, ndim: int) -> int:
        """The dimension a parameter of ``ndim`` dimensions is sharded on."""
        return min(self.shard_dim, ndim - 1)


@frozen
class DDP:
    """``DistributedDataParallel``: every rank holds the whole model."""


@frozen
class Unsharded:
    """A plain module on one rank with no parallel wrapper: the non-distributed end."""


Engine = Union[FSDP1, FSDP2, DDP, Unsharded]
ENGINE_CLASSES = (FSDP1, FSDP2, DDP, Unsharded)


def _sorted_unique(paths) -> tuple[str, ...]:
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
    """

    engine: Engine = field(validator=instance_of(ENGINE_CLASSES))
    mesh_shape: tuple[int, ...] = field(converter=tuple)
    wrap: tuple[str, ...] = field(default=(), converter=_sorted_unique)
    state_dict: str = field(default="sharded", validator=in_(STATE_DICT_TYPES))
    device: str = field(default="cpu", validator=in_(DEVICES))
    cpu_offload: bool = field(default=False, validator=instance_of(bool))
    broadcast_from_rank0: bool = field(default=False, validator=instance_of(bool))
    state_dict_api: str = field(default="combined", validator=in_(STATE_DICT_APIS))

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
        lists_units = isinstance(engine, FSDP2) or (isinstance(engine, FSDP1) and engine.wraps_listed_modules)
        if self.wrap and not lists_units:
            raise ValueError(f"wrap lists modules, but {engine!r} does not shard listed modules")
        if self.broadcast_from_rank0 and self.state_dict != "full":
            raise ValueError("broadcast_from_rank0 loads a full state dict: it needs state_dict 'full'")
        if self.state_dict == "local" and not (isinstance(engine, FSDP1) and not engine.hybrid):
            raise ValueError(
                f"state_dict 'local' is FSDP1's LOCAL_STATE_DICT, which takes no DeviceMesh: it needs "
                f"an FSDP1 engine with a non-hybrid strategy, not {engine!r}"
            )
        if self.state_dict == "local" and (self.cpu_offload or self.state_dict_api != "combined"):
            raise ValueError(
                "a 'local' side gets its model state from FSDP1 itself: no cpu_offload, state_dict_api 'combined'"
            )

    @property
    def world_size(self) -> int:
        n = 1
        for v in self.mesh_shape:
            n *= v
        return n

    @property
    def wrap_innermost_first(self) -> list[str]:
        """``wrap`` in the order the engines need: a module before any of its ancestors."""
        return sorted(self.wrap, key=lambda path: -path.count("."))


# --- how the checkpoint is written and read -------------------------------------

#: ``save``: ``dcp.save``/``dcp.load``; ``legacy``: the older ``save_state_dict``/``load_state_dict``
#: with an explicit ``FileSystemWriter``/``FileSystemReader``; ``async``: ``dcp.async_save``, whose
#: write may still run while the save side goes on training (continuation).
DCP_APIS = ("save", "legacy", "async")


@frozen
class Dcp:
    """A DCP checkpoint directory written through ``FileSystemWriter`` with these options."""

    api: str = field(default="save", validator=in_(DCP_APIS))
    single_file_per_rank: bool = field(default=True, validator=instance_of(bool))
    thread_count: int = field(default=1, validator=[instance_of(int), ge(1), le(4)])
    sync_files: bool = field(default=True, validator=instance_of(bool))


@frozen
class TorchSave:
    """One file: the save side's full state dict, written by its rank 0 with ``torch.save``, read
    with ``torch.load(weights_only=True)`` (by rank 0 only when the load side broadcasts it)."""


@frozen
class DcpToTorchSave:
    """``dcp.save``, then ``format_utils.dcp_to_torch_save`` on one process with no process
    group; the load side reads that file with ``torch.load(weights_only=True)`` as a full state dict."""


Storage = Union[Dcp, TorchSave, DcpToTorchSave]
STORAGE_CLASSES = (Dcp, TorchSave, DcpToTorchSave)


# --- the optimizer ------------------------------------------------------------
#
# Each optimizer names its torch class and its hyperparameters as plain values,
# so the ranks (``build.py``) and the exported scripts (``export.py``) make the
# very same optimizer from one description. The load side's optimizer is
# ``perturbed``: other hyperparameters, which only a loaded param group restores.


@frozen
class SGD:
    lr: float = field(default=0.1, validator=instance_of(float))
    momentum: float = field(default=0.9, validator=instance_of(float))  # 0.0: no optimizer state at all

    def hyperparameters(self, perturbed: bool = False) -> dict:
        scale = 0.5 if perturbed else 1.0
        return {"lr": self.lr * scale, "momentum": self.momentum * scale}


@frozen
class Adam:
    lr: float = field(default=0.01, validator=instance_of(float))
    amsgrad: bool = field(default=False, validator=instance_of(bool))  # adds max_exp_avg_sq

    def hyperparameters(self, perturbed: bool = False) -> dict:
        extra = {"amsgrad": True} if self.amsgrad else {}
        if perturbed:
            return {"lr": self.lr * 0.5, "betas": (0.8, 0.99), "eps": 3e-8, **extra}
        return {"lr": self.lr, **extra}


@frozen
class AdamW:
    lr: float = field(default=0.01, validator=instance_of(float))
    weight_decay: float = field(default=0.01, validator=instance_of(float))

    def hyperparameters(self, perturbed: bool = False) -> dict:
        if perturbed:
            return {"lr": self.lr * 0.5, "weight_decay": self.weight_decay * 0.5, "betas": (0.8, 0.99)}
        return {"lr": self.lr, "weight_decay": self.weight_decay}


@frozen
class Adagrad:
    """Its state (``sum``, ``step``) exists from construction, before any step."""

    lr: float = field(default=0.1, validator=instance_of(float))

    def hyperparameters(self, perturbed: bool = False) -> dict:
        return {"lr": self.lr * 0.5, "lr_decay": 0.01} if perturbed else {"lr": self.lr}


@frozen
class RMSprop:
    lr: float = field(default=0.01, validator=instance_of(float))
    momentum: float = field(default=0.0, validator=instance_of(float))  # > 0 adds momentum_buffer
    centered: bool = field(default=False, validator=instance_of(bool))  # adds grad_avg

    def hyperparameters(self, perturbed: bool = False) -> dict:
        scale = 0.5 if perturbed else 1.0
        extra = {"alpha": 0.9} if perturbed else {}
        return {"lr": self.lr * scale, "momentum": self.momentum * scale, "centered": self.centered, **extra}


Optimizer = Union[SGD, Adam, AdamW, Adagrad, RMSprop]
OPTIMIZER_CLASSES = (SGD, Adam, AdamW, Adagrad, RMSprop)

#: How the second param group differs from the first (and from the optimizer's defaults).
SECOND_GROUP = {"lr_scale": 0.3, "weight_decay": 0.001}


def optimizer_groups(optimizer, param_groups: int, *, perturbed: bool = False) -> tuple[str, list[dict]]:
    """``(torch.optim class name, hyperparameters of each param group)``.

    Parameter ``i`` (in ``model.parameters()`` order) goes to group ``i % param_groups``;
    a group may be empty when there are fewer parameters than groups.
    """
    first = optimizer.hyperparameters(perturbed)
    groups = [first]
    for _ in range(1, param_groups):
        groups.append(
            {**first, "lr": first["lr"] * SECOND_GROUP["lr_scale"], "weight_decay": SECOND_GROUP["weight_decay"]}
        )
    return type(optimizer).__name__, groups


# --- the case ---------------------------------------------------------------


@frozen
class Case:
    """Build ``model`` on ``save``, train ``steps`` steps, save; rebuild on ``load``, load.

    ``seed`` seeds the save side's initial weights and the training data; the
    load side's weights come from ``seed + 1`` so that loading has work to do.

    ``ignore_frozen_params``: both sides' state dicts leave out frozen parameters
    (``StateDictOptions(ignore_frozen_params=True)``) and the load is not strict, as for a
    fine-tune whose frozen base weights come from elsewhere: the load must restore all
    the rest and leave the frozen parameters at the load side's own values.
    """

    model: Model = field(validator=instance_of(Model))
    save: Side = field(validator=instance_of(Side))
    load: Side = field(validator=instance_of(Side))
    optimizer: Optimizer = field(validator=instance_of(OPTIMIZER_CLASSES))
    steps: int = field(default=1, validator=[instance_of(int), ge(0), le(64)])
    flatten_optimizer_state_dict: bool = field(default=True, validator=instance_of(bool))
    batch_size: int = field(default=2, validator=_POSITIVE_INT)
    seed: int = field(default=0, validator=[instance_of(int), ge(0)])
    checks: tuple[str, ...] = field(default=(), converter=_sorted_unique)
    param_groups: int = field(default=1, validator=[instance_of(int), ge(1), le(2)])
    load_mutation: str | None = field(default=None, validator=optional(in_(LOAD_MUTATIONS)))
    storage: Storage = field(factory=Dcp, validator=instance_of(STORAGE_CLASSES))
    ignore_frozen_params: bool = field(default=False, validator=instance_of(bool))
    schema_version: int = field(default=SCHEMA_VERSION)

    @checks.validator
    def _known_checks(self, attribute, value):
        unknown = set(value) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}; choose from {list(CHECKS)}")

    @schema_version.validator
    def _known_schema(self, attribute, value):
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value!r} is not {SCHEMA_VERSION}, the one this shardfuzz reads")

    def __attrs_post_init__(self):
        if self.model.has_batch_norm and self.batch_size < 2:
            raise ValueError("a model with a BatchNorm needs batch_size >= 2 (BatchNorm1d trains on batch statistics)")
        storage = self.storage
        if (self.save.state_dict == "local") != (self.load.state_dict == "local"):
            raise ValueError(
                "a 'local' checkpoint holds flat-parameter shards that only a 'local' load reads: "
                "both sides 'local' or neither"
            )
        if self.ignore_frozen_params and self.load.state_dict == "local":
            raise ValueError("ignore_frozen_params is a StateDictOptions field: it does not apply to 'local' sides")
        if isinstance(storage, TorchSave) and {self.save.state_dict, self.load.state_dict} != {"full"}:
            raise ValueError("TorchSave storage writes and reads a full state dict: both sides need state_dict 'full'")
        if isinstance(storage, DcpToTorchSave) and self.load.state_dict != "full":
            raise ValueError("DcpToTorchSave storage loads a full state dict: the load side needs state_dict 'full'")
        if self.ignore_frozen_params and self.load_mutation is not None:
            raise ValueError(
                "ignore_frozen_params loads with strict=False, which lets an incompatible load "
                "through by design: it takes load_mutation None"
            )
        if self.kept_by_load() and "continuation" in self.checks:
            raise ValueError(
                "with ignore_frozen_params the sides' frozen parameters differ after the load, so "
                "training on cannot match: the continuation check needs a model with none frozen"
            )
        load = self.load
        if load.cpu_offload and load.state_dict == "full" and not load.broadcast_from_rank0:
            raise ValueError(
                "load.cpu_offload with a full state dict leaves it on rank 0 alone: "
                "the load side then needs broadcast_from_rank0"
            )
        known = set(self.model.submodule_paths())
        for side_name in ("save", "load"):
            unknown = set(getattr(self, side_name).wrap) - known
            if unknown:
                raise ValueError(f"{side_name}.wrap names modules not in the model: {sorted(unknown)}")

    def kept_by_load(self) -> list[str]:
        """Gathered-state keys (``model.<fqn>``) the load leaves at the load side's own values:
        the frozen parameters, where ``ignore_frozen_params`` keeps them out of the checkpoint."""
        if not self.ignore_frozen_params:
            return []
        frozen = set(self.model.frozen_paths())
        return [f"model.{name}" for name in self.model.parameter_shapes() if name.rsplit(".", 1)[0] in frozen]

    @property
    def local_may_refuse(self) -> bool:
        """Whether a loud refusal is an acceptable outcome of the load: a ``local`` checkpoint
        loaded on another topology must round-trip exactly or raise, never load wrong values."""
        return self.load.state_dict == "local" and not self.same_sharding

    @property
    def saves_async(self) -> bool:
        """Whether the save is ``dcp.async_save`` (its write runs on while the save side trains)."""
        return isinstance(self.storage, Dcp) and self.storage.api == "async"

    @property
    def world_size(self) -> int:
        """Ranks the case needs: the larger of the two sides."""
        return max(self.save.world_size, self.load.world_size)

    @property
    def same_sharding(self) -> bool:
        """Whether both sides run the same arithmetic (the state-dict type does not enter training)."""
        a, b = self.save, self.load
        return (a.engine, a.mesh_shape, a.wrap, a.device) == (b.engine, b.mesh_shape, b.wrap, b.device)

    def load_model(self) -> Model:
        """The model the load side builds: ``model``, or its incompatible mutation."""
        if self.load_mutation is None:
            return self.model
        children = list(self.model.root.children)
        if self.load_mutation == "extra-layer":
            last_width = self.model.output_width
            return attrs.evolve(
                self.model, root=attrs.evolve(self.model.root, children=children + [Linear(last_width)])
            )
        return attrs.evolve(self.model, root=_widen_first_linear(self.model.root))


def _widen_first_linear(node):
    """``node`` with its first Linear one output wider (the layers after it follow)."""
    return map_first_linear(node, lambda linear: attrs.evolve(linear, out_features=linear.out_features + 1))


def map_first_linear(node, change):
    """``node`` with ``change`` applied to its first Linear in forward order (unchanged if it has none)."""
    if isinstance(node, Linear):
        return change(node)
    if isinstance(node, LEAF_CLASSES):
        return node
    children = list(node.children)
    for i, child in enumerate(children):
        if any(isinstance(leaf, Linear) for leaf in leaves(child)):
            children[i] = map_first_linear(child, change)
            return attrs.evolve(node, children=children)
    return node


def shard_count(side: Side) -> int:
    """How many pieces each parameter is cut into on ``side`` (1 where it is replicated)."""
    engine = side.engine
    if isinstance(engine, (DDP, Unsharded)) or (isinstance(engine, FSDP1) and engine.sharding_strategy == "NO_SHARD"):
        return 1
    return side.mesh_shape[-1]


def dimensions(case: Case) -> dict[str, str]:
    """The case's values along each labelled dimension (for ``event()`` and coverage)."""
    widths = [out for _, _, out, _ in case.model.linears()]
    kinds = case.model.leaf_kinds()

    def side(s: Side, name: str) -> dict[str, str]:
        shards = shard_count(s)
        engine = s.engine
        fsdp1 = isinstance(engine, FSDP1)
        fsdp2 = isinstance(engine, FSDP2)
        return {
            f"{name}_engine": type(engine).__name__.lower(),
            f"{name}_device": s.device,
            f"{name}_world_size": str(s.world_size),
            f"{name}_mesh": f"{len(s.mesh_shape)}d",
            f"{name}_state_dict": s.state_dict,
            f"{name}_wrapped": "none" if not s.wrap else "some",
            f"{name}_uneven_split": str(any(w % shards for w in widths)).lower(),
            f"{name}_empty_shard": str(any(w < shards for w in widths)).lower(),
            f"{name}_fsdp1_strategy": engine.sharding_strategy.lower() if fsdp1 else "n/a",
            f"{name}_fsdp1_wrap_policy": engine.wrap_policy if fsdp1 else "n/a",
            f"{name}_fsdp1_use_orig_params": str(engine.use_orig_params).lower() if fsdp1 else "n/a",
            f"{name}_fsdp2_reshard_after_forward": str(engine.reshard_after_forward).lower() if fsdp2 else "n/a",
            f"{name}_fsdp2_shard_dim": str(engine.shard_dim) if fsdp2 else "n/a",
            f"{name}_cpu_offload": str(s.cpu_offload).lower(),
            f"{name}_state_dict_api": s.state_dict_api,
        }

    return {
        **side(case.save, "save"),
        **side(case.load, "load"),
        "resharded": str((case.save.engine, case.save.mesh_shape) != (case.load.engine, case.load.mesh_shape)).lower(),
        "optimizer": type(case.optimizer).__name__.lower(),
        "optimizer_state": _optimizer_state_kind(case),
        "param_groups": str(case.param_groups),
        "steps": str(case.steps),
        "flatten_optimizer_state_dict": str(case.flatten_optimizer_state_dict).lower(),
        "depth": str(min(case.model.depth(), 4)) + ("+" if case.model.depth() >= 4 else ""),
        **{f"check_{name}": str(name in case.checks).lower() for name in CHECKS},
        "load_mutation": case.load_mutation or "none",
        "linears": str(min(len(widths), 4)) + ("+" if len(widths) >= 4 else ""),
        "frozen": "some" if case.model.frozen_paths() else "none",
        "norms": _mix(kinds, {"LayerNorm": "layer", "BatchNorm": "batch"}),
        "conv": _mix(kinds, {"Conv1d": "1d", "Conv2d": "2d"}),
        "embedding": str(case.model.num_embeddings > 0).lower(),
        "scalar_parameter": str("Scale" in kinds).lower(),
        "tied": str("Tied" in kinds).lower(),
        "dtype": case.model.dtype,
        **_storage_dimensions(case.storage),
        "broadcast_from_rank0": str(case.load.broadcast_from_rank0).lower(),
        "ignore_frozen_params": str(case.ignore_frozen_params).lower(),
    }


def _storage_dimensions(storage) -> dict[str, str]:
    if not isinstance(storage, Dcp):
        label = "torch-save" if isinstance(storage, TorchSave) else "dcp-to-torch-save"
        return {
            "storage": label,
            "writer_single_file_per_rank": "n/a",
            "writer_threads": "n/a",
            "writer_sync_files": "n/a",
        }
    return {
        "storage": f"dcp-{storage.api}",
        "writer_single_file_per_rank": str(storage.single_file_per_rank).lower(),
        "writer_threads": "1" if storage.thread_count == 1 else "2+",
        "writer_sync_files": str(storage.sync_files).lower(),
    }


def _mix(kinds: set[str], labels: dict[str, str]) -> str:
    """``none``, the label of the one kind of ``labels`` among the model's leaf ``kinds``, or ``both``."""
    found = [label for kind, label in labels.items() if kind in kinds]
    return found[0] if len(found) == 1 else ("both" if found else "none")


def _optimizer_state_kind(case: Case) -> str:
    """``none`` (momentum-free SGD, or no step taken), else ``some``; Adagrad has state from the start."""
    opt = case.optimizer
    if isinstance(opt, SGD) and opt.momentum == 0.0:
        return "none"
    if case.steps == 0 and not isinstance(opt, Adagrad):
        return "none"
    return "some"


# --- JSON -------------------------------------------------------------------

converter = cattrs.Converter(forbid_extra_keys=True)
for _cls in (Sequential, Block, FSDP1, Model, Side, Case):
    attrs.resolve_types(_cls, globals(), locals())
# Fields added after the first corpus entries were written stay out of the JSON at
# their defaults, so those entries (and their file names) do not change.
converter.register_unstructure_hook(
    Linear, make_dict_unstructure_fn(Linear, converter, frozen=override(omit_if_default=True))
)
for _union in (Node, Engine, Optimizer, Storage):
    configure_tagged_union(_union, converter, tag_name="kind", tag_generator=lambda c: c.__name__)
# A root is a container only; reuse the tag names of the node union.
configure_tagged_union(Union[Sequential, Block], converter, tag_name="kind", tag_generator=lambda c: c.__name__)
# After the unions: the generated hooks below must find the unions' (tagged) ones.
_DEFAULT_OMITTED = override(omit_if_default=True)
converter.register_unstructure_hook(
    Side,
    make_dict_unstructure_fn(
        Side,
        converter,
        device=_DEFAULT_OMITTED,
        cpu_offload=_DEFAULT_OMITTED,
        broadcast_from_rank0=_DEFAULT_OMITTED,
        state_dict_api=_DEFAULT_OMITTED,
    ),
)
converter.register_unstructure_hook(Model, make_dict_unstructure_fn(Model, converter, dtype=_DEFAULT_OMITTED))
# Last: Case's generated hook takes the Side and Model hooks registered above.
converter.register_unstructure_hook(
    Case, make_dict_unstructure_fn(Case, converter, storage=_DEFAULT_OMITTED, ignore_frozen_params=_DEFAULT_OMITTED)
)


def to_dict(case: Case) -> dict:
    return converter.unstructure(case)


def from_dict(data: dict) -> Case:
    """Build a Case from its JSON form; raises ``ValueError`` naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a case is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"case schema_version {version!r} is not {SCHEMA_VERSION} (written by another shardfuzz?)")
    try:
        return converter.structure(data, Case)
    except Exception as exc:  # cattrs raises ExceptionGroups with nested detail
        raise ValueError(describe_structure_error(exc, "case")) from exc


def dumps(case: Case) -> str:
    return json.dumps(to_dict(case), sort_keys=True, separators=(",", ":"))


def loads(text: str) -> Case:
    return from_dict(json.loads(text))


def describe_structure_error(exc: BaseException, path: str) -> str:
    """cattrs' path-annotated lines, each with the validator's own words, as one line."""
    try:
        lines = cattrs.transform_error(exc, path=path, format_exception=_format_leaf)
    except Exception:
        lines = [f"{type(exc).__name__}: {exc}"]
    return "; ".join(lines)


def _format_leaf(exc: BaseException, type_) -> str:
    if isinstance(exc, KeyError):
        return f"missing field or unknown kind {exc}"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return f"invalid value ({exc})"
    return cattrs.v.format_exception(exc, type_)
