"""How a training loop calls the checkpoint APIs: when it takes its state dicts, how often it resumes, how strict
its load is. Each field is a dimension of its own, drawn independently of the model and the sides."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from attrs import field, frozen
from attrs.validators import ge, in_, instance_of

#: How many save-then-load round-trips a case makes: 1, or 2 (save, load, train on, save again, load again).
RESUMES = (1, 2)

#: When one module's parameters get no gradient: never, at every step (a branch the forward does not use: the
#: optimizer holds no state for them), or at the first step only (an expert no token reached at first: their
#: state starts a step late, so their step counts differ from the others').
GRADLESS = ("never", "always", "first-step")


@frozen
class Loop:
    """The training loop around the checkpoint calls (``Case.loop``; left out of the JSON at its default).

    ``save_held``: the save side takes its model state dict once, right after building the model (before the
    first forward), and hands that same dict to the save after training, as a trainer that builds its
    checkpointer at start-up does (torchtitan's ``ModelWrapper`` caches ``get_model_state_dict``): the dict
    must still hold the live, trained parameters. The optimizer's state dict is taken at save time (it has no
    state before the first step).

    ``resumes`` 2: after the load, the load side trains on, saves a second checkpoint, and a fresh build of the
    save side's layout loads it; the second load is judged against the load side's state at the second save
    (oracle ``resumed-state``). ``load_held``: the load side loads into a model state dict taken at build and
    saves that same dict again (so it needs ``resumes`` 2: with one round-trip it changes nothing); a load may
    leave such a dict pointing at tensors the model no longer uses.

    ``lenient``: the load side's model has one more Linear than the checkpoint holds and loads its model alone
    with ``strict=False`` (DCP's ``allow_partial_load``, ``set_model_state_dict`` with ``StateDictOptions(
    strict=False)``), as a fine-tune onto a model with a new head does: every model tensor the checkpoint holds
    must load, the new layer keep the load side's own values, and the optimizer stay as built. (``strict`` is
    documented for the model; ``torch.optim`` refuses a param group of another size, measured: so the optimizer
    is not loaded.)

    ``gradless``: one module's parameters (those of the first parameter in name order, see
    ``portable.optimizers.first_module_parameters``) have their gradient set to None before the optimizer steps, on every
    training step of both sides (``GRADLESS``). ``empty_group``: the optimizer gets one more param group with no
    parameters, as a loop that splits parameters by a filter (no weight decay on biases) gets where none match.

    ``late_group``: ``first_module_parameters`` are left out of the optimizer as built and join it in a param group
    of their own (the first group's hyperparameters at half its learning rate) after the load, as a loop that
    unfreezes a module once resumed does; the save side adds them after its save, and a second round-trip's fresh
    build before its load (a resume past that point). The checkpoint is judged before the group is added;
    continuation and a second round-trip judge the group.

    ``ranks_from``: the global rank the case's ranks start from. A side on ``n`` ranks runs on global ranks
    ``ranks_from .. ranks_from + n - 1`` and hands save and load that subgroup, so from 1 on no side's process group
    holds global rank 0: the coordinator of DCP's plans, the source of its broadcasts and rank 0 of every gather
    is then the group's rank 0, not the world's (code that asks ``dist.get_rank() == 0``, or passes 0 where torch
    takes a global rank, goes wrong only here). The ranks below it run neither side.

    ``second_save``: after its save, the save side trains on (the continuation's steps) and saves again, into another
    directory, before the first save is waited for, as a loop that checkpoints every few steps does. With
    ``dcp.async_save`` the second save starts while the first is still being written, each on a process group of its
    own (one group's collectives from two writer threads could interleave); the API allows it, and torchtitan waits
    for the first instead. The first checkpoint must hold the state at its own save call (what the load side
    loads and is judged on), and the second must finish.
    """

    save_held: bool = field(default=False, validator=instance_of(bool))
    load_held: bool = field(default=False, validator=instance_of(bool))
    resumes: int = field(default=1, validator=in_(RESUMES))
    lenient: bool = field(default=False, validator=instance_of(bool))
    gradless: str = field(default="never", validator=in_(GRADLESS))
    empty_group: bool = field(default=False, validator=instance_of(bool))
    ranks_from: int = field(default=0, validator=[instance_of(int), ge(0)])
    late_group: bool = field(default=False, validator=instance_of(bool))
    second_save: bool = field(default=False, validator=instance_of(bool))

    def __attrs_post_init__(self):
        if self.load_held and self.resumes < 2:
            raise ValueError("load_held matters only when the load side saves again: it needs resumes 2")

    def dimensions(self) -> dict[str, str]:
        return {
            "save_held_state_dict": str(self.save_held).lower(),
            "load_held_state_dict": str(self.load_held).lower(),
            "resumes": str(self.resumes),
            "lenient_load": str(self.lenient).lower(),
            "gradless_params": self.gradless,
            "empty_param_group": str(self.empty_group).lower(),
            "group_without_rank0": str(self.ranks_from > 0).lower(),
            "late_param_group": str(self.late_group).lower(),
            "second_save": str(self.second_save).lower(),
        }

    def describe(self) -> str:
        """The non-default fields in a few words ("" at the default)."""
        words = [
            word
            for on, word in (
                (self.save_held, "save-side state dict held from build"),
                (self.load_held, "load-side state dict held"),
                (self.resumes > 1, f"{self.resumes} round-trips"),
                (self.lenient, "lenient load (strict=False, a new layer)"),
                (self.gradless != "never", f"a module without gradients ({self.gradless})"),
                (self.empty_group, "an empty param group"),
                (self.ranks_from > 0, f"sides on the ranks from global rank {self.ranks_from} (groups without rank 0)"),
                (self.late_group, "a param group added after the load"),
                (self.second_save, "a second save before the first is waited for"),
            )
            if on
        ]
        return ", ".join(words)

    def simpler(self) -> Iterator[Loop]:
        """This loop with one field back at its default (the shrinker's steps)."""
        if self.resumes > 1:
            yield attrs.evolve(self, resumes=1, load_held=False)
        if self.load_held:
            yield attrs.evolve(self, load_held=False)
        if self.save_held:
            yield attrs.evolve(self, save_held=False)
        if self.lenient:
            yield attrs.evolve(self, lenient=False)
        if self.gradless != "never":
            yield attrs.evolve(self, gradless="never")
            if self.gradless == "always":
                yield attrs.evolve(self, gradless="first-step")
        if self.empty_group:
            yield attrs.evolve(self, empty_group=False)
        if self.late_group:
            yield attrs.evolve(self, late_group=False)
        if self.second_save:
            yield attrs.evolve(self, second_save=False)
        if self.ranks_from:
            yield attrs.evolve(self, ranks_from=0)
            if self.ranks_from > 1:
                yield attrs.evolve(self, ranks_from=1)


#: The default loop: fresh state dicts, one round-trip, a strict load.
PLAIN_LOOP = Loop()
