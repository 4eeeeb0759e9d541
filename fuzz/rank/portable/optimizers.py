"""The optimizer a side builds: its param groups, and the parameters a training-loop pattern picks.

Torch only, copied into exported scripts as it is (``export``): every function here is in ``__all__``.
"""

from __future__ import annotations

import torch

from shardfuzz.rank.portable.sharding import unwrapped_name

__all__ = [
    "group_parameters",
    "parameters_by_name",
    "first_module_parameters",
    "optimizer_class",
    "make_optimizer",
    "add_late_group",
    "eager_steps",
]


def group_parameters(model, param_groups: int) -> list[list]:
    """``model``'s parameters split into ``param_groups`` lists, the same way whatever the engine.

    The order is that of the parameters' names with the engines' wrapper prefixes
    removed, sorted; parameter ``i`` of that order goes to group ``i % param_groups``.
    (FSDP1 without ``use_orig_params`` shows FlatParameters instead; see unsupported.CASE_RULES.)
    """
    ordered = [p for _, p in parameters_by_name(model)]
    return [ordered[i::param_groups] for i in range(param_groups)]


def parameters_by_name(model) -> list:
    """``(name, parameter)`` of ``model``, names without the engines' wrapper prefixes, sorted by name: the one
    order the loop's choices of parameters use, whatever the engine."""
    return sorted(((unwrapped_name(name), p) for name, p in model.named_parameters()), key=lambda item: item[0])


def first_module_parameters(model) -> list:
    """The parameters a ``gradless`` loop leaves without gradients (and a ``late_group`` one adds after the load):
    in ``group_parameters``' name order, the first parameter and every other of its module (just that one where it
    sits at the root, as an FSDP1 root's FlatParameter does, or where its module holds every parameter). Never all
    of them: a step where no parameter has a gradient is no training step (a ``GradScaler`` refuses it: "No inf
    checks were recorded")."""
    named = parameters_by_name(model)
    if len(named) < 2:
        return []
    first = named[0][0]
    module = first.rpartition(".")[0]
    idle = [p for name, p in named if (name.rpartition(".")[0] == module if module else name == first)]
    return idle if len(idle) < len(named) else idle[:1]


def optimizer_class(name: str):
    """``torch.optim.<name>``, else torchao's low-bit optimizer of that name (``torchao.optim``)."""
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)
    import torchao.optim

    return getattr(torchao.optim, name)


def make_optimizer(model, name: str, hyperparameters: list[dict], empty_group: bool = False, late_group: bool = False):
    """``torch.optim.<name>`` over ``model``'s parameters in one group per hyperparameter dict; ``empty_group``:
    and one more group, with the first group's hyperparameters and no parameters; ``late_group``: without
    ``first_module_parameters``, which ``add_late_group`` adds later. On CPU parameters a torchao optimizer's step
    runs eagerly (``eager_steps``)."""
    late = {id(p) for p in first_module_parameters(model)} if late_group else set()
    groups = [[p for p in group if id(p) not in late] for group in group_parameters(model, len(hyperparameters))]
    param_groups = [{"params": g, **h} for g, h in zip(groups, hyperparameters)]
    if empty_group:
        param_groups.append({"params": [], **hyperparameters[0]})
    cls = optimizer_class(name)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return (eager_steps(cls) if on_cpu and cls.__module__.startswith("torchao") else cls)(param_groups)


def add_late_group(optim, model) -> None:
    """Add ``first_module_parameters`` to ``optim`` as a group of their own, after it was built (a loop that
    unfreezes a module once resumed): the first group's hyperparameters at half its learning rate. Their gradients
    so far are dropped: ``zero_grad`` clears only the optimizer's own parameters, so theirs had summed every step."""
    hyperparameters = {k: v for k, v in optim.param_groups[0].items() if k != "params"}
    lr = hyperparameters["lr"] * 0.5  # a new value (torchao keeps lr as a Tensor that its scheduler fills in place)
    late = first_module_parameters(model)
    for p in late:
        p.grad = None
    optim.add_param_group({**hyperparameters, "lr": lr, "params": late})


def eager_steps(cls):
    """``cls`` with its ``step`` run eagerly: torchao compiles its per-parameter step inside ``step``
    (``torch.compile(single_param_adam, fullgraph=True, dynamic=False)``), which on CPU ranks costs seconds per new
    parameter shape on every rank, so during ``step`` ``torch.compile`` hands the function back as it is (dynamo
    turned off would refuse ``fullgraph``). The state it keeps and checkpoints is the same either way. Every
    caller's step is covered, DSD's ``_init_optim_state`` included."""
    from unittest import mock

    def uncompiled(function=None, **_options):
        return function if function is not None else (lambda inner: inner)

    class EagerStep(cls):
        def step(self, closure=None):
            with mock.patch.object(torch, "compile", uncompiled):
                return super().step(closure)

    EagerStep.__name__ = EagerStep.__qualname__ = cls.__name__
    return EagerStep
