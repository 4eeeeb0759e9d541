"""The optimizer: its kinds, their hyperparameters, and the param groups they are split into."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Union

from attrs import field, frozen
from attrs.validators import in_, instance_of

#
# Each optimizer names its torch class and its hyperparameters as plain values,
# so the ranks (``build.py``) and the exported scripts (``export.py``) make the
# very same optimizer from one description. The load side's optimizer is
# ``perturbed``: other hyperparameters, which only a loaded param group restores.


class OptimizerKind:
    """What every optimizer kind says about itself; the kinds are ``OPTIMIZER_CLASSES``. A new kind is one
    ``@frozen`` subclass here (fields: its JSON; ``hyperparameters``: its torch arguments), listed there,
    plus its draw in ``strategies/options.py``."""

    __slots__ = ()

    #: It scales each step by a running measure of the gradient's own size (see ``oracles.ADAPTIVE_STEP_SLACK``).
    adaptive: ClassVar[bool] = True
    #: The largest step, in learning rates, that a gradient of pure rounding noise can cause in one step: Adam's
    #: and Adagrad's normalised step is at most about 1; RMSprop's first is 1/sqrt(1 - alpha) = 10 (alpha 0.99).
    noise_step: ClassVar[float] = 1.0
    #: Its cases may take many times the usual: they keep the generic deadline, tripled (``executor.deadlines``).
    slow: ClassVar[bool] = False
    lr: float

    def hyperparameters(self, perturbed: bool = False) -> dict:
        raise NotImplementedError

    def has_state(self, steps: int) -> bool:
        """Whether it holds per-parameter state after ``steps`` steps (most kinds: after the first)."""
        return steps > 0

    def torch_class(self) -> str:
        """The optimizer class's name, in ``torch.optim`` (or, for a kind outside torch, its package's module)."""
        return type(self).__name__


@frozen
class SGD(OptimizerKind):
    lr: float = field(default=0.1, validator=instance_of(float))
    momentum: float = field(default=0.9, validator=instance_of(float))  # 0.0: no optimizer state at all

    adaptive: ClassVar[bool] = False
    noise_step: ClassVar[float] = 0.0

    def hyperparameters(self, perturbed: bool = False) -> dict:
        scale = 0.5 if perturbed else 1.0
        return {"lr": self.lr * scale, "momentum": self.momentum * scale}

    def has_state(self, steps: int) -> bool:
        return self.momentum != 0.0 and steps > 0


@frozen
class Adam(OptimizerKind):
    lr: float = field(default=0.01, validator=instance_of(float))
    amsgrad: bool = field(default=False, validator=instance_of(bool))  # adds max_exp_avg_sq

    def hyperparameters(self, perturbed: bool = False) -> dict:
        extra = {"amsgrad": True} if self.amsgrad else {}
        if perturbed:
            return {"lr": self.lr * 0.5, "betas": (0.8, 0.99), "eps": 3e-8, **extra}
        return {"lr": self.lr, **extra}


@frozen
class AdamW(OptimizerKind):
    lr: float = field(default=0.01, validator=instance_of(float))
    weight_decay: float = field(default=0.01, validator=instance_of(float))

    def hyperparameters(self, perturbed: bool = False) -> dict:
        return _adamw_hyperparameters(self.lr, self.weight_decay, perturbed)


def _adamw_hyperparameters(lr: float, weight_decay: float, perturbed: bool) -> dict:
    """AdamW's (torch's and torchao's): the load side's halves the rates and takes other betas."""
    if perturbed:
        return {"lr": lr * 0.5, "weight_decay": weight_decay * 0.5, "betas": (0.8, 0.99)}
    return {"lr": lr, "weight_decay": weight_decay}


@frozen
class Adagrad(OptimizerKind):
    """Its state (``sum``, ``step``) exists from construction, before any step."""

    lr: float = field(default=0.1, validator=instance_of(float))

    def hyperparameters(self, perturbed: bool = False) -> dict:
        return {"lr": self.lr * 0.5, "lr_decay": 0.01} if perturbed else {"lr": self.lr}

    def has_state(self, steps: int) -> bool:
        return True


@frozen
class RMSprop(OptimizerKind):
    lr: float = field(default=0.01, validator=instance_of(float))
    momentum: float = field(default=0.0, validator=instance_of(float))  # > 0 adds momentum_buffer
    centered: bool = field(default=False, validator=instance_of(bool))  # adds grad_avg

    noise_step: ClassVar[float] = 10.0

    def hyperparameters(self, perturbed: bool = False) -> dict:
        scale = 0.5 if perturbed else 1.0
        extra = {"alpha": 0.9} if perturbed else {}
        return {"lr": self.lr * scale, "momentum": self.momentum * scale, "centered": self.centered, **extra}


#: The bit widths of torchao's low-bit AdamW (``torchao.optim.AdamW8bit``, ``AdamW4bit``).
LOW_BIT_WIDTHS = (8, 4)

#: The output width of the Linear a low-bit optimizer's drawn case ends with: torchao quantises a moment only where
#: the parameter's local tensor has at least 4096 elements and whole blocks (256 for 8-bit, 128 for 4-bit), so this
#: Linear's weight is quantised unsharded and on 2 ranks, and on 3 or 4 where the layer before it is wide enough.
LOW_BIT_WIDTH = 8192


@frozen
class LowBitAdamW(OptimizerKind):
    """torchao's AdamW with its moments held in ``bits``-bit tensor subclasses (``OptimState8bit``/``4bit``: codes,
    one scale per block, a quantisation map), block size the library's default. torchao quantises a moment only
    where the parameter's local tensor has at least 4096 elements and a whole number of blocks; smaller ones keep
    plain float32 moments, so a drawn low-bit case's model ends in a wide Linear (``strategies.cases``)."""

    bits: int = field(default=8, validator=in_(LOW_BIT_WIDTHS))
    # Its state goes through torchao's and DTensor's Python dispatch op by op: a case with FSDP2 on 3 ranks
    # measured 30 s on 2 cores, against 3 s with torch's Adam.
    slow: ClassVar[bool] = True
    lr: float = field(default=0.01, validator=instance_of(float))
    weight_decay: float = field(default=0.01, validator=instance_of(float))

    def hyperparameters(self, perturbed: bool = False) -> dict:
        return _adamw_hyperparameters(self.lr, self.weight_decay, perturbed)

    def torch_class(self) -> str:
        return f"AdamW{self.bits}bit"


#: The optimizer kinds, the registry the rest of shardfuzz reads: a new kind is added here.
OPTIMIZER_CLASSES: tuple[type[OptimizerKind], ...] = (SGD, Adam, AdamW, Adagrad, RMSprop, LowBitAdamW)
if TYPE_CHECKING:
    Optimizer = OptimizerKind
else:  # cattrs tags each class by name
    Optimizer = Union[OPTIMIZER_CLASSES]

#: How the second param group differs from the first (and from the optimizer's defaults).
SECOND_GROUP = {"lr_scale": 0.3, "weight_decay": 0.001}


def optimizer_groups(optimizer, param_groups: int, *, perturbed: bool = False) -> tuple[str, list[dict]]:
    """``(optimizer class name, hyperparameters of each param group)``: a ``torch.optim`` class, or torchao's.

    Parameter ``i`` (in ``model.parameters()`` order) goes to group ``i % param_groups``;
    a group may be empty when there are fewer parameters than groups.
    """
    first = optimizer.hyperparameters(perturbed)
    groups = [first]
    for _ in range(1, param_groups):
        groups.append(
            {**first, "lr": first["lr"] * SECOND_GROUP["lr_scale"], "weight_decay": SECOND_GROUP["weight_decay"]}
        )
    return optimizer.torch_class(), groups
