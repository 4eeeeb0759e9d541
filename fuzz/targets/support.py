"""What cases a checkpoint target can run, as plain data with a reason for each exclusion.

A framework's checkpoint API supports part of what shardfuzz can draw: accelerate's FSDP
checkpointing knows FSDP1 and FSDP2 but not DDP, picks its own state-dict options, and
broadcasts on the default process group. A target says so with a ``support`` attribute, a
``TargetSupport``. The strategies read it to leave excluded cases undrawn (no time spent on
them); the pool reads it to answer any that still arrive (a replayed corpus entry) as
``unsupported`` with the reason, on every rank alike, before running anything.
"""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import deep_iterable, ge, in_, instance_of, optional

from shardfuzz.case import STATE_DICT_TYPES, Case, Dcp, Side
from shardfuzz.case.sides import ENGINE_CLASSES

__all__ = ["ENGINE_KINDS", "EVERYTHING", "FRAMEWORK_ENGINES", "NO_LOAD_PARTIAL", "TargetSupport"]

ENGINE_KINDS = tuple(kind.__name__ for kind in ENGINE_CLASSES)  # as a case's JSON names them
#: Engines that are a framework's own, each with the target that runs it (ZeRO: DeepSpeed's ``deepspeed.initialize``):
#: only a target whose ``engines`` names one draws or runs it (``engines=None`` means torch's).
FRAMEWORK_ENGINES = {"ZeRO": "deepspeed"}


def _names(choices: tuple[str, ...]):
    return optional(deep_iterable(in_(choices), instance_of(tuple)))


@frozen
class TargetSupport:
    """The cases a target runs. Each exclusion carries its reason in ``reasons`` (keyed by the
    field's name), which ``shardfuzz targets`` lists and an ``unsupported`` verdict quotes.

    ``engines``/``state_dicts``: the kinds allowed on either side (None: every one). ``load_engines``: kinds
    allowed on the load side only, a route out of the target's own engines (DeepSpeed's ``zero_to_fp32`` into an
    unsharded model).
    ``same_state_dict``: the load side uses the save side's state-dict type (a framework that reads
    back only the files its own type writes). ``options``: the ``StateDictOptions`` flags
    (``cpu_offload``, ``broadcast_from_rank0``, ``ignore_frozen_params``) are drawn; False when the
    framework sets its own. ``flatten``: flattened optimizer state dicts are drawn. ``storages``:
    storage variants (async save, writer options, ``torch.save`` files) are drawn; only for a target
    whose I/O is DCP's own. ``whole_pool``: both sides span every rank of the pool (the target's
    collectives run on the default process group; so no ``Loop.ranks_from``). ``per_side_pools``: a
    whole-pool target whose loads into another number of ranks are a route it supports: each side runs on
    a warm pool of its own size (``executor.per_side.PerSidePools``), so the sides' sizes are drawn.
    ``hybrid``: HSDP sides (2-D meshes) are drawn.
    ``min_steps``: training steps before the save, at least. ``training_state``: cases with an LR
    scheduler and other training state (``Case.training``) are drawn: the state dict a
    ``CheckpointTarget`` is handed then holds an ``"app"`` ``Stateful`` beside ``"model"`` and ``"optim"``;
    an ``ObjectTarget`` saves the objects it is given, so it says False. ``held_state_dicts``: cases whose
    sides hand the target a model state dict taken at build and kept (``Loop.save_held``/``load_held``);
    an ``ObjectTarget`` takes its own state dicts, so it says False. ``lenient_loads``: lenient loads
    (``Loop.lenient``: keys the checkpoint lacks are left as they are) are drawn; they need the target's
    ``load_partial`` (``LoadsPartially``), which ``support_of`` checks for a target that declares nothing.
    """

    engines: tuple[str, ...] | None = field(default=None, validator=_names(ENGINE_KINDS))
    load_engines: tuple[str, ...] = field(default=(), validator=deep_iterable(in_(ENGINE_KINDS), instance_of(tuple)))
    state_dicts: tuple[str, ...] | None = field(default=None, validator=_names(STATE_DICT_TYPES))
    same_state_dict: bool = field(default=False, validator=instance_of(bool))
    options: bool = field(default=True, validator=instance_of(bool))
    flatten: bool = field(default=True, validator=instance_of(bool))
    storages: bool = field(default=False, validator=instance_of(bool))
    whole_pool: bool = field(default=False, validator=instance_of(bool))
    per_side_pools: bool = field(default=False, validator=instance_of(bool))
    hybrid: bool = field(default=True, validator=instance_of(bool))
    min_steps: int = field(default=0, validator=[instance_of(int), ge(0)])
    training_state: bool = field(default=True, validator=instance_of(bool))
    held_state_dicts: bool = field(default=True, validator=instance_of(bool))
    lenient_loads: bool = field(default=True, validator=instance_of(bool))
    reasons: dict[str, str] = field(factory=dict, validator=instance_of(dict))

    def __attrs_post_init__(self):
        missing = sorted(name for name in self.exclusions() if not self.reasons.get(name))
        if missing:
            raise ValueError(f"TargetSupport excludes {missing} without a reason; give one in reasons={{name: why}}")

    def exclusions(self) -> list[str]:
        """The names of the fields that exclude something."""
        names = [name for name in ("engines", "state_dicts") if getattr(self, name) is not None]
        names += [
            name
            for name in ("options", "flatten", "hybrid", "training_state", "held_state_dicts", "lenient_loads")
            if not getattr(self, name)
        ]
        names += [name for name in ("same_state_dict", "whole_pool") if getattr(self, name)]
        return names + (["min_steps"] if self.min_steps else [])

    def summary(self) -> dict[str, str]:
        """Each exclusion as ``{what: why}``, for ``shardfuzz targets``."""
        what = {
            "engines": f"engines only {', '.join(self.engines or ())}"
            + (f" (and {', '.join(self.load_engines)} loading)" if self.load_engines else ""),
            "state_dicts": f"state dicts only {', '.join(self.state_dicts or ())}",
            "same_state_dict": "loads with the saving side's state-dict type",
            "options": "no drawn StateDictOptions flags (cpu_offload, broadcast_from_rank0, ignore_frozen_params)",
            "flatten": "no flattened optimizer state dicts",
            "whole_pool": "each side spans its pool (one pool a side size with per_side_pools)"
            if self.per_side_pools
            else "both sides span the whole pool",
            "hybrid": "no HSDP (2-D mesh) sides",
            "min_steps": f"at least {self.min_steps} training step(s) before the save",
            "training_state": "no LR scheduler or other training state in the checkpoint",
            "held_state_dicts": "no model state dict held from build (the target takes its own)",
            "lenient_loads": "no lenient (strict=False, partial) loads",
        }
        return {what[name]: self.reasons[name] for name in self.exclusions()}

    def refuses(self, case: Case, *, world_size: int, per_side: bool = False) -> str:
        """Why ``case`` is outside what the target supports on a pool of ``world_size`` ranks, or ''. ``per_side``:
        each side runs on a pool of its own size (``PerSidePools``), which a whole-pool side spans."""
        for name in self.exclusions():
            if self._breaks(name, case, world_size, per_side=per_side and self.per_side_pools):
                return f"target-support {name}: {self.reasons[name]}"
        framework = next((type(s.engine).__name__ for s in (case.save, case.load) if _framework_engine(s)), None)
        if self.engines is None and framework is not None:
            return (
                f"target-support engines: {framework} is run only by its framework's target "
                f"(--target {FRAMEWORK_ENGINES[framework]})"
            )
        return ""

    def _breaks(self, name: str, case: Case, world_size: int, *, per_side: bool = False) -> bool:
        sides = (case.save, case.load)
        if name == "engines":
            kinds = self.engines or ()
            return type(case.save.engine).__name__ not in kinds or type(case.load.engine).__name__ not in (
                kinds + self.load_engines
            )
        if name == "state_dicts":
            return any(side.state_dict not in (self.state_dicts or ()) for side in sides)
        if name == "same_state_dict":
            return case.save.state_dict != case.load.state_dict
        if name == "options":
            return case.ignore_frozen_params or any(s.cpu_offload or s.broadcast_from_rank0 for s in sides)
        if name == "flatten":
            return case.flatten_optimizer_state_dict
        if name == "whole_pool":
            spans = per_side or all(side.world_size == world_size for side in sides)
            return bool(case.loop.ranks_from) or not spans
        if name == "hybrid":
            return any(_hybrid(side) for side in sides)
        if name == "min_steps":
            return case.steps < self.min_steps
        if name == "training_state":
            return case.training is not None
        if name == "held_state_dicts":
            return case.loop.save_held or case.loop.load_held
        if name == "lenient_loads":
            return case.loop.lenient
        raise AssertionError(name)

    def allows_engine(self, name: str, *, side: str = "either") -> bool:
        """Whether the engine ``name`` (as ``capabilities().engines`` and the coverage name it: ``fsdp2``) is
        supported on ``side``: "save", "load", or "either" of them."""
        if self.engines is None:
            return name not in {kind.lower() for kind in FRAMEWORK_ENGINES}
        kinds = self.engines + (self.load_engines if side != "save" else ())
        return name in {kind.lower() for kind in kinds}

    def allows_storage(self, case: Case) -> bool:
        return self.storages or case.storage == Dcp()


def _framework_engine(side: Side) -> bool:
    return type(side.engine).__name__ in FRAMEWORK_ENGINES


def _hybrid(side: Side) -> bool:
    return len(side.mesh_shape) > 1 or bool(getattr(side.engine, "hybrid", False))


#: The default: everything shardfuzz draws (what DCP itself is put through).
EVERYTHING = TargetSupport()

#: Why a target without ``load_partial`` gets no lenient loads.
NO_LOAD_PARTIAL = (
    "a lenient load leaves the keys the checkpoint lacks as they are; the target has no load_partial "
    "(LoadsPartially) to do that, and its load would rightly refuse them"
)

#: The default of an object-level target that declares nothing: it saves the model and optimizer it is
#: handed, so the training state shardfuzz keeps beside them is not drawn.
OBJECT_TARGET_DEFAULT = TargetSupport(
    training_state=False,
    held_state_dicts=False,
    lenient_loads=False,
    reasons={
        "training_state": "an object-level target saves the model and optimizer it is handed; an LR scheduler "
        "beside them is not among them",
        "held_state_dicts": "an object-level target takes its state dicts from the objects itself",
        "lenient_loads": "an object-level target's load decides its own strictness",
    },
)
