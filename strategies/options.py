"""State-dict kinds and options, optimizers and their steps."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    CHECKS,
    GRADLESS,
    LOAD_MUTATIONS,
    MIXED_PRECISION,
    SCHEDULERS,
    SGD,
    STATE_DICT_APIS,
    STATE_DICT_TYPES,
    Adagrad,
    Adam,
    AdamW,
    Dcp,
    DcpToTorchSave,
    HfSafetensors,
    Loop,
    RMSprop,
    TorchSave,
    TrainingState,
)
from shardfuzz.strategies._helpers import check_int, weighted

__all__ = [
    "checks",
    "flatten_optimizer_state_dict",
    "load_mutations",
    "optimizer_steps",
    "optimizers",
    "param_groups",
    "training_states",
    "mixed_precisions",
    "state_dict_apis",
    "state_dict_types",
    "storages",
    "rarely",
    "low_bit_optimizers",
    "loops",
]


def state_dict_types() -> st.SearchStrategy[str]:
    """``sharded`` or ``full`` for one side; ``local`` needs both sides FSDP1, so ``cases()``
    decides it for the pair."""
    return st.sampled_from(tuple(t for t in STATE_DICT_TYPES if t != "local"))


def state_dict_apis() -> st.SearchStrategy[str]:
    """``get_state_dict``/``set_state_dict`` in 2 draws of 3 (it shrinks there), else the separate
    model and optimizer calls."""
    return st.sampled_from(STATE_DICT_APIS[:1] * 2 + STATE_DICT_APIS[1:])


def flatten_optimizer_state_dict() -> st.SearchStrategy[bool]:
    """``StateDictOptions.flatten_optimizer_state_dict``; always True where torch lacks the field."""
    return st.booleans() if capabilities().flatten_optimizer_state_dict else st.just(True)


def optimizers():
    """SGD (with and without momentum), Adam (also amsgrad), AdamW, Adagrad, RMSprop (plain,
    with momentum, centered): each variant keeps a different set of state tensors.
    Shrinks towards SGD with momentum."""
    return st.one_of(
        st.builds(SGD, momentum=st.sampled_from([0.9, 0.0])),
        st.builds(Adam, amsgrad=st.booleans()),
        st.builds(AdamW),
        st.builds(Adagrad),
        st.builds(RMSprop, momentum=st.sampled_from([0.0, 0.9]), centered=st.booleans()),
    )


def low_bit_optimizers(bits: tuple[int, ...], *, one_in: int = 6) -> st.SearchStrategy[int | None]:
    """A bit width of torchao's low-bit AdamW (``LowBitAdamW``) in about 1 draw of ``one_in`` where ``bits`` offers
    any (``capabilities().low_bit_optimizers``), else None; shrinks to None. Rare: its step is compiled, and each
    new parameter shape costs a compile of seconds on every rank."""
    check_int("one_in", one_in, minimum=1)
    if not bits:
        return st.none()
    return st.sampled_from((None,) * (len(bits) * (one_in - 1)) + tuple(bits))


def param_groups() -> st.SearchStrategy[int]:
    """One param group, or two with different hyperparameters (parameters alternate between them)."""
    return st.integers(1, 2)


def optimizer_steps(*, max_steps: int = 3) -> st.SearchStrategy[int]:
    check_int("max_steps", max_steps, minimum=0)
    return st.integers(0, max_steps)


def checks() -> st.SearchStrategy[frozenset[str]]:
    """Which optional oracles a case runs: each in about 1 case of 5 (each costs collectives,
    and ``full-offload`` meets a known FSDP1 crash that costs a pool restart); shrinks towards none."""
    return st.tuples(*[rarely(one_in=5)] * len(CHECKS)).map(lambda on: frozenset(c for c, o in zip(CHECKS, on) if o))


def load_mutations() -> st.SearchStrategy[str | None]:
    """``None`` (a compatible load) in 2 of 3 draws, else one way to make the load incompatible.

    An incompatible load is cheap (it stops at the first error), so a third of the
    cases is not a third of the time. ``None`` comes first: failures shrink towards it.
    """
    return st.sampled_from((None,) * 4 + LOAD_MUTATIONS)


def rarely(*, one_in: int = 6) -> st.SearchStrategy[bool]:
    """True in about 1 draw of ``one_in``; shrinks to False."""
    check_int("one_in", one_in, minimum=1)
    return st.sampled_from((False,) * (one_in - 1) + (True,))


def training_states(*, one_in: int = 2) -> st.SearchStrategy[TrainingState | None]:
    """Training state saved beside the model and optimizer (``Case.training``) in about 1 draw of
    ``one_in``: an LR scheduler among ``SCHEDULERS``, a gradient scaler or not; shrinks to None."""
    check_int("one_in", one_in, minimum=1)
    state = st.builds(TrainingState, scheduler=st.sampled_from(SCHEDULERS), grad_scaler=st.booleans())
    return weighted((one_in - 1, st.none()), (1, state)) if one_in > 1 else state


def mixed_precisions(*, one_in: int = 6) -> st.SearchStrategy[str]:
    """FSDP mixed precision for a side (``Side.mixed_precision``): ``none`` in about ``one_in - 1`` draws
    of ``one_in``, else one of the bfloat16 policies; shrinks to ``none``."""
    check_int("one_in", one_in, minimum=1)
    policies = MIXED_PRECISION[1:]
    return st.sampled_from(("none",) * ((one_in - 1) * len(policies)) + policies)


def storages() -> st.SearchStrategy:
    """How the checkpoint is written and read (``Case.storage``), among what the installed torch
    offers, by weight: ``dcp.save`` with default writer options 3 (it shrinks there), other ``FileSystemWriter``
    options, the older API or ``async_save`` 2, and 1 each: one ``torch.save`` file, a DCP directory converted by ``format_utils``, or DCP's Hugging Face safetensors files (sharded, or
    consolidated too: a checkpoint of the model alone)."""
    caps = capabilities()
    apis = [api for api in ("save", "legacy", "async") if f"dcp-{api}" in caps.storages]
    if caps.writer_options:
        custom = st.builds(
            Dcp,
            api=st.sampled_from(apis),
            single_file_per_rank=st.booleans(),
            thread_count=st.sampled_from((1, 2)),
            sync_files=st.booleans(),
        )
    else:
        custom = st.builds(Dcp, api=st.sampled_from(apis))
    whole_files: list[st.SearchStrategy] = [st.just(TorchSave())]
    if "dcp-to-torch-save" in caps.storages:
        whole_files.append(st.just(DcpToTorchSave()))
    hf = [st.just(HfSafetensors(consolidated=c)) for c in (False, True) if _hf_kind(c) in caps.storages]
    return weighted((3, st.just(Dcp())), (2, custom), *((1, other) for other in (*whole_files, *hf)))


def _hf_kind(consolidated: bool) -> str:
    return HfSafetensors(consolidated=consolidated).dimensions()["storage"]


def loops(
    *,
    held: bool = True,
    load_held: bool = True,
    lenient: bool = True,
    resumes: bool = True,
    gradless: bool = True,
    empty_group: bool = True,
    late_group: bool = True,
    second_save: bool = True,
):
    """How the training loop calls the checkpoint APIs (``Case.loop``), each field on its own: the save side's
    model state dict held from build in about 1 draw of 4; a second round-trip in 1 of 4 (its load side holding
    its state dict in 3 of 4 of those); otherwise a lenient load in 1 of 6; a module without gradients in 1 of 4
    (always or at the first step); an empty param group in 1 of 6; a param group added after the load in 1 of 6; a second
    save before the first is waited for in 1 of 6. Shrinks to ``Loop()``. Each keyword False leaves that field at its default (a case or target that cannot take
    it: ``held`` the save side's, ``load_held`` the load side's). ``Loop.ranks_from`` depends on the sides: drawn
    by ``cases``."""
    off = st.just(False)
    return st.builds(
        _loop,
        save_held=rarely(one_in=4) if held else off,
        resumed=rarely(one_in=4) if resumes else off,
        load_held=weighted((1, off), (3, st.just(True))) if load_held and resumes else off,
        lenient=rarely(one_in=6) if lenient else off,
        gradless=_gradless() if gradless else st.just("never"),
        empty_group=rarely(one_in=6) if empty_group else off,
        late_group=rarely(one_in=6) if late_group else off,
        second_save=rarely(one_in=6) if second_save else off,
    )


def _gradless():
    """``Loop.gradless``: "never" in 3 draws of 4 (and shrinking to it), else "always" or "first-step"."""
    return weighted((3, st.just("never")), (1, st.sampled_from(GRADLESS[1:])))


def _loop(
    *,
    save_held: bool,
    resumed: bool,
    load_held: bool,
    lenient: bool,
    gradless: str = "never",
    empty_group: bool = False,
    late_group: bool = False,
    second_save: bool = False,
) -> Loop:
    """A second round-trip loads back into the save side's layout, which a lenient load's extra layer would not fit:
    where both are drawn the round-trip wins."""
    return Loop(
        save_held=save_held,
        resumes=2 if resumed else 1,
        load_held=resumed and load_held,
        lenient=lenient and not resumed,
        gradless=gradless,
        empty_group=empty_group,
        late_group=late_group,
        second_save=second_save,
    )
