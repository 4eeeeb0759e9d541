"""What a campaign is asked to do, as one frozen value: its budgets, its seed, what it draws, when it stops."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from attrs import field, frozen
from attrs.converters import optional as optional_converter
from attrs.validators import deep_iterable, deep_mapping, ge, in_, instance_of, min_len, optional
from hypothesis.database import ExampleDatabase

from shardfuzz.case import DEVICES, Model, UserModel
from shardfuzz.search.steering import Expectation
from shardfuzz.targets.support import TargetSupport

__all__ = ["CampaignSettings"]


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _example_database(instance: object, attribute: object, value: ExampleDatabase | None) -> None:
    if value is not None and not isinstance(value, ExampleDatabase):
        raise TypeError(f"database must be a Hypothesis ExampleDatabase or None, got {type(value).__name__}")


def _expectations(value: Mapping[str, Expectation | Mapping[str, str]]) -> dict[str, Expectation]:
    """Signature -> ``Expectation``; plain conditions (dimension -> value) are a person's, unmeasured."""
    return {
        signature: each if isinstance(each, Expectation) else Expectation(dict(each))
        for signature, each in value.items()
    }


@frozen(kw_only=True)
class CampaignSettings:
    """The settings of one campaign (``run_campaign``); only ``budget`` has no default.

    ``budget``: seconds to fuzz for. ``seed``: the seed of the rounds' seeds (None: a random one).
    ``max_world_size``: the most ranks a side is drawn on. ``round_size``: the most examples one
    Hypothesis round draws (fewer when the budget's end is near).

    ``shrink_budget`` (default: half the budget, at least 30 s) caps the time one round spends
    shrinking, and the budget's end caps it too; past either, the round ends at once with the smallest
    failing case of each new failure found so far, and those findings are marked ``shrunk=False``
    (``shardfuzz shrink`` goes on from there). ``stop_on_finding`` ends the campaign after the round
    that shrank its first finding.

    ``database`` (a Hypothesis ``ExampleDatabase``) under ``database_key`` keeps failing examples
    across campaigns; the first round replays them first. ``max_cases`` ends the campaign after that
    many cases (a fixed amount of work, for tests and comparisons), not counting the database's
    examples, which are always replayed.

    ``devices`` are those a side may be drawn on (see ``strategies.cases``); ``vary_storage=False``
    for a user's target, which does its own I/O; ``support`` (the target's ``TargetSupport``) leaves
    undrawn the cases the target does not run; ``model`` (a ``UserModel``, say) is every case's model
    instead of drawn trees.

    ``steer_after=K`` spends the budget on the unknown: once a known bug has been hit K times (once,
    for a hang or a crash), draws like its hits are filtered out (``shardfuzz.search.steering``: the
    fewest dimension values its hits share that set them apart from the other cases run; one masked
    draw in ten still runs, to check the mask). ``expected`` masks known bugs from the first draw
    (signature -> ``Expectation``, or plain conditions): those whose conditions an explanation
    measured, and those whose every hit costs a restart, under the conditions their corpus entries record.

    ``pairwise``: draws that would run no pair of dimension values not run yet are passed over, but one in
    ``pairs.KEEP_EVERY`` (``shardfuzz.search.pairs``); the pairs reached are counted either way.

    ``polish``: once Hypothesis has finished shrinking a finding, or used its share of the shrink
    budget (``HYPOTHESIS_SHRINK_SHARE``), a greedy descent over one-step-simpler cases
    (``shardfuzz.search.polish``) goes on from its case with what is left of the shrink budget.
    """

    budget: float = field(converter=float, validator=ge(0))
    seed: int | None = field(default=None, validator=optional(instance_of(int)))
    max_world_size: int = field(default=4, validator=[instance_of(int), ge(1)])
    round_size: int = field(default=20, validator=[instance_of(int), ge(1)])
    shrink_budget: float | None = field(default=None, converter=optional_converter(float), validator=optional(ge(0)))
    stop_on_finding: bool = field(default=False, validator=instance_of(bool))
    database: ExampleDatabase | None = field(default=None, validator=_example_database)
    database_key: bytes = field(default=b"shardfuzz-campaign", validator=instance_of(bytes))
    max_cases: int | None = field(default=None, validator=optional([instance_of(int), ge(1)]))
    devices: tuple[str, ...] = field(
        default=("cpu",), converter=_names, validator=deep_iterable(in_(DEVICES), iterable_validator=min_len(1))
    )
    vary_storage: bool = field(default=True, validator=instance_of(bool))
    support: TargetSupport | None = field(default=None, validator=optional(instance_of(TargetSupport)))
    steer_after: int | None = field(default=None, validator=optional([instance_of(int), ge(1)]))
    expected: Mapping[str, Expectation] = field(
        factory=dict, converter=_expectations, validator=deep_mapping(instance_of(str), instance_of(Expectation))
    )
    polish: bool = field(default=True, validator=instance_of(bool))
    pairwise: bool = field(default=False, validator=instance_of(bool))
    model: Model | UserModel | None = field(default=None, validator=optional(instance_of((Model, UserModel))))
