"""The Case itself (the model, both sides, the storage, the optimizer, the steps) and its dimensions."""

from __future__ import annotations

import attrs
from attrs import field, frozen
from attrs.validators import ge, in_, instance_of, le, optional

from shardfuzz.case._validators import _POSITIVE_INT
from shardfuzz.case.leaf_kinds import Leaf, Linear, leaf_coverage
from shardfuzz.case.loop import Loop
from shardfuzz.case.optimizers import OPTIMIZER_CLASSES, Optimizer
from shardfuzz.case.sides import ENGINE_CLASSES, EXPERT_STYLE, PP, TP, Side, Unsharded, ZeRO, _sorted_unique
from shardfuzz.case.storage import STORAGE_CLASSES, Dcp, DcpToTorchSave, Storage, TorchSave
from shardfuzz.case.training import NO_TRAINING_STATE, TrainingState
from shardfuzz.case.tree import Model, leaves
from shardfuzz.case.user_model import UserModel

SCHEMA_VERSION = 1

#: Optional oracles a case can ask for (each costs collectives; see ``oracles.py``).
CHECKS = ("continuation", "api-parity", "full-offload")

#: Ways to make the load side's model incompatible with the checkpoint; the
#: load must then fail loudly. ``wider``: the first Linear gets one more output.
#: ``extra-layer``: the root gets one more Linear, a key the checkpoint lacks.
LOAD_MUTATIONS = ("wider", "extra-layer")


@frozen
class Case:
    """Build ``model`` on ``save``, train ``steps`` steps, save; rebuild on ``load``, load.

    ``seed`` seeds the save side's initial weights and the training data; the
    load side's weights come from ``seed + 1`` so that loading has work to do.

    ``ignore_frozen_params``: both sides' state dicts leave out frozen parameters
    (``StateDictOptions(ignore_frozen_params=True)``) and the load is not strict, as for a
    fine-tune whose frozen base weights come from elsewhere: the load must restore all
    the rest and leave the frozen parameters at the load side's own values.

    ``training``: an LR scheduler and more training state saved beside the model and optimizer
    (``TrainingState``; left out of the JSON when None).

    ``loop``: how the training loop calls the checkpoint APIs (held state dicts, a second round-trip, a
    lenient load; ``Loop``, left out of the JSON at its default).
    """

    model: Model | UserModel = field(validator=instance_of((Model, UserModel)))
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
    training: TrainingState | None = field(default=None, validator=optional(instance_of(TrainingState)))
    loop: Loop = field(factory=Loop, validator=instance_of(Loop))
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
        if isinstance(self.model, UserModel):
            self._check_user_model()
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
        if isinstance(storage, (TorchSave, DcpToTorchSave)) and isinstance(self.load.engine, PP):
            # each stage would be handed every stage's keys, which a strict load refuses (run Q); torchtitan loads model
            # parts with strict=False: not drawn
            raise ValueError(
                "a whole-file checkpoint holds every stage's keys: a pipelined load side reads DCP's files"
            )
        if isinstance(storage, TorchSave) and isinstance(self.save.engine, PP):
            # its first rank writes the file, and holds one stage's full state: the others' would be lost (run O)
            raise ValueError(
                "TorchSave storage is written by the save side's first rank, which a pipeline gives one stage"
            )
        if isinstance(storage, DcpToTorchSave) and self.load.state_dict != "full":
            raise ValueError("DcpToTorchSave storage loads a full state dict: the load side needs state_dict 'full'")
        if storage.model_only:
            self._check_model_only_storage()
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
        if self.model.dtype != "float32" and any(s.mixed_precision != "none" for s in (self.save, self.load)):
            raise ValueError("mixed precision lowers a float32 model's compute to bfloat16: it needs dtype float32")
        if self.training is not None and not (isinstance(storage, Dcp) and storage.api != "legacy"):
            raise ValueError(
                "training state is a Stateful in a DCP checkpoint: it needs Dcp storage with api 'save' or "
                "'async' (the older save_state_dict/load_state_dict take a Stateful for one opaque value)"
            )
        load = self.load
        if load.cpu_offload and load.state_dict == "full" and not load.broadcast_from_rank0:
            raise ValueError(
                "load.cpu_offload with a full state dict leaves it on rank 0 alone: "
                "the load side then needs broadcast_from_rank0"
            )
        self._check_loop()
        self._check_pipelines()
        self._check_zero_routes()
        known = set(self.model.submodule_paths())
        leaf_paths = set(self.model.leaf_paths())
        for side_name in ("save", "load"):
            unknown = set(getattr(self, side_name).wrap) - known
            if unknown:
                raise ValueError(f"{side_name}.wrap names modules not in the model: {sorted(unknown)}")
            splits = {
                "linear": {fqn for fqn, _ in self.model.linear_nodes()},
                "experts": {fqn for fqn, _ in self.model.experts_nodes()},
            }
            plan = getattr(getattr(self, side_name).engine, "plan", ())
            wrong = [
                path for path, style in plan if path not in splits["experts" if style == EXPERT_STYLE else "linear"]
            ]
            if wrong:
                raise ValueError(
                    f"{side_name}.engine.plan names modules its styles cannot split (colwise and rowwise a Linear, "
                    f"experts an Experts leaf): {sorted(wrong)}"
                )
            unknown = set(getattr(self, side_name).checkpointed) - leaf_paths
            if unknown:
                raise ValueError(f"{side_name}.checkpointed names modules that are not leaves: {sorted(unknown)}")

    def _check_user_model(self) -> None:
        """What a tree model offers and a user's model does not: an incompatible variant of it, and the
        per-leaf wrappers that need to know its modules' kinds (tensor parallelism, activation
        checkpointing, ``torch.compile``, construction on the meta device)."""
        if self.load_mutation is not None:
            raise ValueError("a user's model (--model) has no incompatible variant: load_mutation must be None")
        for name in ("save", "load"):
            side = getattr(self, name)
            if isinstance(side.engine, (TP, PP)) or side.checkpointed or side.compiled or side.meta_init:
                raise ValueError(
                    f"{name}: a user's model (--model) is sharded as it is: no tensor or pipeline parallelism, "
                    "activation checkpointing, torch.compile or meta-device construction"
                )

    def _check_pipelines(self) -> None:
        """A pipelined side cuts the root's children into its stages, which run the schedule's own backward and
        hold a stage's parameters only: no training state (a scheduler's state is per param group index, and a stage's
        groups are not the model's: a README run loaded one stage's next learning rates in another's group order;
        the gradient scaler's loss scaling the schedule does not do), and no loop that picks one module's parameters
        by name (``Loop.gradless``, ``Loop.late_group``: a stage may not hold them)."""
        for name in ("save", "load"):
            side = getattr(self, name)
            if not isinstance(side.engine, PP):
                continue
            children = len(self.model.root.children) if isinstance(self.model, Model) else 0
            if side.mesh_shape[0] > children:
                raise ValueError(
                    f"{name}: {side.mesh_shape[0]} pipeline stages need as many root children, not {children}"
                )
            if self.loop.gradless != "never" or self.loop.late_group or self.training is not None:
                raise ValueError(f"{name}: PP takes no gradless parameters, late param group or training state")
            if self.param_groups != 1:  # each stage splits its own parameters into groups: not the model's split
                raise ValueError(f"{name}: PP takes one param group (a stage would group its own parameters)")
        if isinstance(self.load.engine, PP) and "full-offload" in self.checks:
            raise ValueError("the full-offload check wants the whole state on rank 0, which holds one pipeline stage")

    def _check_loop(self) -> None:
        loop = self.loop
        if (loop.lenient or loop.resumes > 1) and self.load_mutation is not None:
            raise ValueError("a lenient load or a second round-trip loads a compatible model: load_mutation None")
        if loop.lenient and self.training is not None:
            raise ValueError("a lenient load loads the model alone: it takes no training state (training None)")
        if loop.lenient and (isinstance(self.model, UserModel) or self.ignore_frozen_params):
            raise ValueError(
                "a lenient load adds a Linear to a drawn model (not a user's) and leaves only it out of the "
                "checkpoint: it takes ignore_frozen_params False"
            )
        if loop.lenient and "continuation" in self.checks:
            raise ValueError("after a lenient load the sides' models differ by a layer: no continuation check")
        if loop.lenient and (self.load.state_dict == "local" or self.load.broadcast_from_rank0):
            raise ValueError("a lenient load is a StateDictOptions(strict=False) load: not 'local', no broadcast")
        if loop.resumes > 1 and (loop.lenient or self.ignore_frozen_params or self.local_may_refuse):
            raise ValueError(
                "a second round-trip loads back into the save side's layout, which every key of the second "
                "checkpoint must fit: no lenient load, no ignore_frozen_params, no 'local' refusal"
            )
        if loop.resumes > 1:
            why = self.why_not_resumable()
            if why:
                raise ValueError(
                    f"a second round-trip loads into the save side's layout, which cannot load here: {why}"
                )
        for name, held in (("save", loop.save_held), ("load", loop.load_held)):
            if held and getattr(self, name).state_dict == "local":
                raise ValueError(f"{name}: a held state dict is DSD's; a 'local' side gets FSDP1's own")

    def _check_zero_routes(self) -> None:
        """A DeepSpeed checkpoint (a ZeRO save side) loads by DeepSpeed's routes only: into a ZeRO engine
        (``load_checkpoint``), or consolidated by ``zero_to_fp32`` into an unsharded model (``consolidates_zero``); a
        ZeRO load side reads DeepSpeed's files alone."""
        save_zero, load_zero = (isinstance(s.engine, ZeRO) for s in (self.save, self.load))
        if load_zero and not save_zero:
            raise ValueError("a ZeRO load side reads a DeepSpeed checkpoint: the save side is a ZeRO engine too")
        if save_zero and not (load_zero or isinstance(self.load.engine, Unsharded)):
            raise ValueError(
                "a DeepSpeed checkpoint loads into a ZeRO engine, or through zero_to_fp32 into an Unsharded model"
            )
        if self.consolidates_zero:
            self._check_model_only("zero_to_fp32's consolidation")

    @property
    def consolidates_zero(self) -> bool:
        """Whether the load is DeepSpeed's ``zero_to_fp32``: a ZeRO checkpoint's fp32 weights gathered into one state
        dict and loaded into an unsharded model, whose optimizer stays as built."""
        return zero_to_fp32_route(self.save, self.load)

    def _check_model_only(self, what: str) -> None:
        """A load of the model alone (``what``): what needs the optimizer or more from the checkpoint does not fit it."""
        if self.training is not None or self.load_mutation is not None or self.ignore_frozen_params:
            raise ValueError(f"{what} loads the model's tensors alone: no training state, load_mutation or frozen keys")
        if "continuation" in self.checks or self.loop.resumes > 1:
            raise ValueError(f"{what} leaves the load side's optimizer as built: no continuation check, one round-trip")

    def _check_model_only_storage(self) -> None:
        """A checkpoint of the model alone (``HfSafetensors``): what needs the optimizer or more in the checkpoint, or
        a load of another kind, does not fit it."""
        s = self.storage
        self._check_model_only(repr(s))
        for name, side in (("save", self.save), ("load", self.load)):
            if side.state_dict == "local" or side.broadcast_from_rank0:
                raise ValueError(
                    f"{s!r} is written and read through DCP's planner: {name} side not local, no broadcast"
                )

    @property
    def loads_model_only(self) -> bool:
        """Whether the load side loads its model alone, leaving its optimizer as built: a lenient load, a checkpoint
        of the model alone, or DeepSpeed's ``zero_to_fp32`` consolidation (``consolidates_zero``)."""
        return self.loop.lenient or self.storage.model_only or self.consolidates_zero

    def why_not_resumable(self) -> str:
        """Why this case cannot make a second round-trip (the load side saving, the save side's layout loading),
        or '': that round-trip is this case with its sides swapped, so it must be a valid case itself (a save side
        whose full state dict is offloaded to rank 0 cannot load, nor one a ``torch.save`` file cannot fill)."""
        try:
            attrs.evolve(self, save=self.load, load=self.save, loop=Loop())
        except ValueError as exc:
            return str(exc)
        return ""

    def new_on_load(self) -> list[str]:
        """The parameter names of the layer a lenient load adds (``Loop.lenient``): the checkpoint lacks them."""
        if not self.loop.lenient:
            return []
        return sorted(set(self.load_model().parameter_shapes()) - set(self.model.parameter_shapes()))

    def kept_by_load(self) -> list[str]:
        """Gathered-state keys (``model.<fqn>``) the load leaves at the load side's own values:
        the frozen parameters, where ``ignore_frozen_params`` keeps them out of the checkpoint, and
        the layer a lenient load adds (which keeps the whole optimizer too: ``Loop.lenient``)."""
        kept = [f"model.{name}" for name in self.new_on_load()]
        if not self.ignore_frozen_params:
            return kept
        frozen = set(self.model.frozen_paths())
        return kept + [f"model.{name}" for name in self.model.parameter_shapes() if name.rsplit(".", 1)[0] in frozen]

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
        """Ranks the case needs: the larger of the two sides, from the rank its ranks start at (``Loop.ranks_from``)."""
        return self.loop.ranks_from + max(self.save.world_size, self.load.world_size)

    @property
    def same_sharding(self) -> bool:
        """Whether both sides run the same arithmetic (the state-dict type does not enter training)."""
        a, b = self.save, self.load
        return (a.engine, a.mesh_shape, a.wrap, a.device, a.mixed_precision) == (
            b.engine,
            b.mesh_shape,
            b.wrap,
            b.device,
            b.mixed_precision,
        )

    @property
    def compute_dtype(self) -> str:
        """The dtype training computes in: bfloat16 where a side uses mixed precision, else the model's."""
        lowered = any(side.mixed_precision != "none" for side in (self.save, self.load))
        return "bfloat16" if lowered else self.model.dtype

    def load_model(self) -> Model | UserModel:
        """The model the load side builds: ``model``, or its incompatible mutation (a lenient load's: one
        more layer)."""
        mutation = "extra-layer" if self.loop.lenient else self.load_mutation
        if mutation is None or isinstance(self.model, UserModel):
            return self.model
        children = list(self.model.root.children)
        if mutation == "extra-layer":
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
    if isinstance(node, Leaf):
        return node
    children = list(node.children)
    for i, child in enumerate(children):
        if any(isinstance(leaf, Linear) for leaf in leaves(child)):
            children[i] = map_first_linear(child, change)
            return attrs.evolve(node, children=children)
    return node


def shard_count(side: Side) -> int:
    """How many pieces each parameter is cut into on ``side`` (1 where it is replicated)."""
    return side.engine.shard_count(side.mesh_shape)


def dimensions(case: Case) -> dict[str, str]:
    """The case's values along each labelled dimension (for ``event()`` and coverage)."""
    widths = [out for _, _, out, _ in case.model.linears()]

    def side(s: Side, name: str) -> dict[str, str]:
        shards = shard_count(s)
        engine = s.engine
        own = engine.dimension_values()
        return {
            f"{name}_engine": type(engine).__name__.lower(),
            f"{name}_pp_degree": str(s.mesh_shape[0]) if isinstance(engine, PP) else "n/a",
            f"{name}_device": s.device,
            f"{name}_world_size": str(s.world_size),
            f"{name}_mesh": f"{len(s.mesh_shape)}d",
            f"{name}_state_dict": s.state_dict,
            f"{name}_wrapped": "none" if not s.wrap else "some",
            f"{name}_uneven_split": str(any(w % shards for w in widths)).lower(),
            f"{name}_empty_shard": str(any(leaves_a_rank_empty(w, shards) for w in _split_widths(case, s))).lower(),
            **{f"{name}_{dim}": own.get(dim, "n/a") for kind in ENGINE_CLASSES for dim in kind.dimension_names},
            f"{name}_cpu_offload": str(s.cpu_offload).lower(),
            f"{name}_state_dict_api": s.state_dict_api,
            f"{name}_activation_checkpointing": s.activation_checkpointing,
            f"{name}_compiled": str(s.compiled).lower(),
            f"{name}_meta_init": str(s.meta_init).lower(),
            f"{name}_mixed_precision": s.mixed_precision,
            f"{name}_offload_params": str(s.offload_params).lower(),
        }

    return {
        **side(case.save, "save"),
        **side(case.load, "load"),
        "resharded": str((case.save.engine, case.save.mesh_shape) != (case.load.engine, case.load.mesh_shape)).lower(),
        "optimizer": case.optimizer.torch_class().lower(),
        "optimizer_state": _optimizer_state_kind(case),
        "param_groups": str(case.param_groups),
        "steps": str(case.steps),
        "flatten_optimizer_state_dict": str(case.flatten_optimizer_state_dict).lower(),
        "depth": str(min(case.model.depth(), 4)) + ("+" if case.model.depth() >= 4 else ""),
        **{f"check_{name}": str(name in case.checks).lower() for name in CHECKS},
        "load_mutation": case.load_mutation or "none",
        "linears": str(min(len(widths), 4)) + ("+" if len(widths) >= 4 else ""),
        "frozen": "some" if case.model.frozen_paths() else "none",
        **leaf_coverage(case.model),
        "dtype": case.model.dtype,
        **case.storage.dimensions(),
        "broadcast_from_rank0": str(case.load.broadcast_from_rank0).lower(),
        "ignore_frozen_params": str(case.ignore_frozen_params).lower(),
        **(case.training.dimensions() if case.training else NO_TRAINING_STATE),
        **case.loop.dimensions(),
    }


def zero_to_fp32_route(save: Side, load: Side) -> bool:
    """Whether a checkpoint saved by ``save`` reaches ``load`` through DeepSpeed's ``zero_to_fp32``: a ZeRO save side,
    an unsharded load side (``Case.consolidates_zero``; the strategies ask it of two sides before they make a case)."""
    return isinstance(save.engine, ZeRO) and isinstance(load.engine, Unsharded)


def leaves_a_rank_empty(width: int, shards: int) -> bool:
    """Whether splitting ``width`` rows over ``shards`` ranks as ``torch.chunk`` does (FSDP2's and DTensor's
    ``Shard``: pieces of ``ceil(width / shards)``) leaves a rank nothing: 1 over 2, but also 4 over 3 (2, 2, 0)."""
    piece = -(-width // shards)
    return -(-width // piece) < shards


def _split_widths(case: Case, side: Side) -> list[int]:
    """The widths ``side`` splits: each Linear's output features, and under tensor parallelism (a rowwise
    Linear splits its input) its input features too; each mixture of experts' expert count."""
    linears = case.model.linears()
    experts = [
        node.experts for _, node in case.model.experts_nodes() if node is not None
    ]  # FSDP and expert parallelism split them
    if isinstance(side.engine, (TP, PP)) and side.engine.plan:
        return [w for _, fed, out, _ in linears for w in (fed, out)] + experts
    return [out for _, _, out, _ in linears] + experts


def _optimizer_state_kind(case: Case) -> str:
    """``none`` (momentum-free SGD, or no step taken), else ``some``; Adagrad has state from the start."""
    return "some" if case.optimizer.has_state(case.steps) else "none"
