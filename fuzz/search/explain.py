"""Explaining a finding by measurement: run its neighbours, one dimension changed at a time.

A shrunk case says *a* smallest way to fail, not *which* of its values the failure needs. Hypothesis's
explain phase answers that for a test's arguments; here each neighbour of the case changes one thing a bug
report would name (an engine, an option, the mesh, the optimizer, the widths, ...) and the table of what
each did gives:

- the **conditions**: the dimensions whose change made the case pass (the failure needs their values),
  and those whose every change kept the same failure (they vary freely);
- the **realism**: whether the same failure shows on the nearest realistic case (every tensor split
  evenly with a shard on every rank, widths at least 8x the largest mesh dimension, at least two Linear
  layers, the side options at their defaults), and if not, the edges the shrunk case has that it lacks
  (an empty shard, an uneven split, a one-element layer, a width below the world size).

Nothing here draws: the neighbours are built from the case (``neighbours``), and ``explain_case`` runs
them with whatever runs a case (a warm pool in a campaign or ``shardfuzz explain``).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterator, Mapping

import attrs

from shardfuzz.case import (
    Case,
    Linear,
    Model,
    dimensions,
    map_first_linear,
    shard_count,
)
from shardfuzz.case.conditions import one_of
from shardfuzz.executor.stop import StopRequested
from shardfuzz.findings.corpus import Entry
from shardfuzz.findings.explanation import Explanation, Neighbour
from shardfuzz.search.neighbours import appended, neighbours, or_none, scaled
from shardfuzz.verdict import Verdict

__all__ = [
    "edge_variants",
    "explain_case",
    "measure_reach",
    "neighbours",
    "realistic_case",
    "with_explanation",
    "with_reach_measured",
]

#: The side options a realistic case sets to their defaults, unless the failure needs the case's value (then the
#: realistic case keeps it: compiling, activation checkpointing or mixed precision are realistic set-ups too).
_SIDE_DEFAULTS = {
    "cpu_offload": False,
    "broadcast_from_rank0": False,
    "state_dict_api": "combined",
    "activation_checkpointing": "none",
    "checkpointed": (),
    "compiled": False,
    "meta_init": False,
    "mixed_precision": "none",
    "offload_params": False,
}


def realistic_case(case: Case, necessary: Mapping[str, str] | None = None) -> Case | None:
    """The nearest realistic case: widths scaled by a multiple of every shard count and mesh dimension until
    the narrowest is at least 8x the largest mesh dimension (so every split is even and every rank holds a
    shard), at least two Linear layers, the sides' options at their defaults except those ``necessary`` (labels
    of ``case.dimensions``) says the failure needs. None for a user's model or where no such case is valid."""
    model = case.model
    if not isinstance(model, Model):
        return None
    sides = (case.save, case.load)
    largest = max(max(side.mesh_shape) for side in sides)
    unit = math.lcm(*(shard_count(side) for side in sides), *(n for side in sides for n in side.mesh_shape))
    narrowest = min([model.input_width] + [out for _, _, out, _ in model.linears()])
    factor = unit * max(1, math.ceil(8 * largest / (narrowest * unit)))
    if len(model.linears()) < 2:
        model = or_none(model, root=appended(model.root, Linear(model.output_width)))
    wider = scaled(model, factor) if model is not None else None
    if wider is None:
        return None
    needed = {label.partition("_")[2] for label in (necessary or {}) if label.startswith(("save_", "load_"))}
    save, load = (
        or_none(side, **{option: value for option, value in _SIDE_DEFAULTS.items() if option not in needed})
        for side in sides
    )
    if "activation_checkpointing" in needed:  # keep the checkpointed leaves with it
        save, load = (
            or_none(new, checkpointed=old.checkpointed) if new is not None else None
            for new, old in ((save, case.save), (load, case.load))
        )
    return or_none(case, model=wider, save=save, load=load)


def _edges(case: Case) -> tuple[str, ...]:
    """The ``EDGES`` this case stands on."""
    dims = dimensions(case)
    widths = [case.model.input_width] + [out for _, _, out, _ in case.model.linears()]
    found = {
        "empty_shard": "true" in (dims["save_empty_shard"], dims["load_empty_shard"]),
        "uneven_split": "true" in (dims["save_uneven_split"], dims["load_uneven_split"]),
        "one_element": 1 in widths,
        "narrow": min(widths) < max(case.save.world_size, case.load.world_size),
    }
    return tuple(edge for edge, present in found.items() if present)


def measure_reach(
    case: Case,
    nearest: Case,
    signature: str,
    run: Callable[[Case], Verdict],
    *,
    cannot_run: Callable[[Case], str] = lambda case: "",
    admissible: Callable[[Case], str] = lambda case: "",
) -> tuple[str, tuple[str, ...], tuple[Neighbour, ...]]:
    """What ``case``'s realistic case ``nearest`` did (a ``NEIGHBOUR_OUTCOMES`` value); where it passes or fails
    otherwise, the edges ``case`` stands on and what each edge trial did (``edge_trials``): ``nearest`` again
    with one edge put back, mildest first, each run until one fails the same way."""

    def outcome(case: Case) -> tuple[str, str]:
        why_not = cannot_run(case) or admissible(case)
        if why_not:
            return "not supported", why_not[:300]
        try:
            return _outcome(run(case), signature)
        except ValueError as exc:
            return "not supported", str(exc)[:300]

    realistic = outcome(nearest)[0]
    if realistic == "same failure":
        return realistic, (), ()
    if realistic == "not supported":
        return realistic, _edges(case), ()
    trials = []
    for edge, change, variant in edge_variants(nearest):
        if variant is None:
            continue
        trials.append(Neighbour(edge, change, *outcome(variant)))
        if trials[-1].outcome == "same failure":
            break
    return realistic, _edges(case), tuple(trials)


def edge_variants(case: Case) -> Iterator[tuple[str, str, Case | None]]:
    """``(edge, change, variant)``: ``case`` (a realistic one) with its first Linear's width changed so that it
    stands on one more ``EDGES`` edge, mildest first: an uneven split (every rank still holding a shard), a
    rank's empty shard at a width no narrower than the shard count, a width below it, a one-element layer.
    An edge the case's shard counts cannot show alone (an empty shard of a width >= 2 shards) is left out."""
    model = case.model
    if not isinstance(model, Model) or not model.linears():
        return
    width = model.linears()[0][2]
    shards = max(shard_count(case.save), shard_count(case.load), *case.save.mesh_shape, *case.load.mesh_shape)
    widths = {"uneven_split": width + 1} if shards > 1 else {}
    empty = [w for w in range(shards, 4 * shards) if math.ceil(w / shards) * (shards - 1) >= w]
    if empty and shards > 2:
        widths["empty_shard"] = empty[0]
    if shards > 2:
        widths["narrow"] = shards - 1
    widths["one_element"] = 1
    for edge, new in widths.items():
        changed = or_none(
            model, root=map_first_linear(model.root, lambda leaf, new=new: attrs.evolve(leaf, out_features=new))
        )
        variant = or_none(case, model=changed) if changed is not None else None
        yield edge, f"first Linear {width} -> {new} wide, {shards} shards", variant


def _outcome(verdict: Verdict, signature: str) -> tuple[str, str]:
    if verdict.status == "unsupported":
        return "not supported", verdict.summary()[:300]
    if not verdict.is_failure:
        return "passes", ""
    if verdict.signature() == signature:
        return "same failure", ""
    return "other failure", verdict.signature()[:300]


def explain_case(
    case: Case,
    signature: str,
    run: Callable[[Case], Verdict],
    *,
    cannot_run: Callable[[Case], str] = lambda case: "",
    admissible: Callable[[Case], str] = lambda case: "",
    deadline: float | None = None,
    torch_version: str = "",
    resume: Explanation | None = None,
) -> Explanation:
    """Run ``case``'s neighbours with ``run`` and say what they measured about the failure ``signature``.

    ``cannot_run(neighbour)``: why this executor cannot run it ('' where it can); ``admissible(neighbour)``:
    why not to run it at all (a neighbour that would meet a known hang, say). Past ``deadline``
    (``time.monotonic()``), the neighbours left are not run and the explanation says it is incomplete; ``resume``
    (such an explanation of the same case, on the same torch) keeps what its neighbours did and runs the rest."""
    measured = {
        (row.dimension, row.change): (row.outcome, row.detail)
        for row in (resume.neighbours if resume is not None else ())
        if row.outcome != "not supported"
    }
    rows: list[Neighbour] = []
    complete = True
    changed: list[tuple[Neighbour, set[str], dict[str, str]]] = []  # each row, the labels it changed, its values
    before = dimensions(case)
    for dimension, change, neighbour in neighbours(case):
        if deadline is not None and time.monotonic() > deadline:
            complete = False
            break
        why_not = "the data model refuses it" if neighbour is None else cannot_run(neighbour) or admissible(neighbour)
        if why_not or neighbour is None:
            rows.append(Neighbour(dimension, change, "not supported", why_not[:300]))
            continue
        after = dimensions(neighbour)
        labels = {label for label in before if before[label] != after.get(label) and before[label] != "n/a"}
        own = [label for label in labels if not _derived(label)]
        if len(own) > 1:  # an option that took the other mesh with it (HSDP's 2-D): the row is the option's
            own = [label for label in own if not label.endswith(("_mesh", "_world_size"))] or own
        row_dimension = own[0] if len(own) == 1 else dimension
        if (row_dimension, change) in measured:  # resuming: this neighbour ran before
            outcome, detail = measured[row_dimension, change]
        else:
            try:
                verdict = run(neighbour)
            except StopRequested:  # the budget's end or a stop abandoned the case in flight
                complete = False
                break
            except ValueError as exc:  # the executor's admission refused it (more ranks than it has, say)
                rows.append(Neighbour(dimension, change, "not supported", str(exc)[:300]))
                continue
            outcome, detail = _outcome(verdict, signature)
        row = Neighbour(row_dimension, change, outcome, detail)
        rows.append(row)
        changed.append((row, labels, after))
    realistic, edges, trials = "", tuple[str, ...](), tuple[Neighbour, ...]()
    necessary = _necessary(changed, before)
    nearest = realistic_case(case, necessary)
    if complete and nearest is not None and (deadline is None or time.monotonic() <= deadline):
        try:
            realistic, edges, trials = measure_reach(
                case, nearest, signature, run, cannot_run=cannot_run, admissible=admissible
            )
        except StopRequested:
            complete = False
    elif nearest is not None:
        complete = False
    return Explanation(
        neighbours=tuple(rows),
        necessary=_edges_dropped_if_realistic(necessary, realistic),
        free=_free(changed),
        realistic=realistic,
        edges=edges,
        edge_trials=trials,
        complete=complete,
        torch=torch_version,
        date=datetime.date.today().isoformat(),
    )


def with_reach_measured(
    explanation: Explanation,
    case: Case,
    signature: str,
    run: Callable[[Case], Verdict],
    *,
    cannot_run: Callable[[Case], str] = lambda case: "",
) -> Explanation:
    """A complete ``explanation`` of ``case`` with its realistic case and edge trials measured again (its
    neighbours kept): for an entry explained before the edge trials, or on another torch."""
    nearest = realistic_case(case, explanation.necessary)
    if nearest is None:
        return explanation
    realistic, edges, trials = measure_reach(case, nearest, signature, run, cannot_run=cannot_run)
    necessary = _edges_dropped_if_realistic(explanation.necessary, realistic)
    return attrs.evolve(explanation, realistic=realistic, edges=edges, edge_trials=trials, necessary=necessary)


def _edges_dropped_if_realistic(necessary: Mapping[str, str], realistic: str) -> dict[str, str]:
    """``necessary`` without needing an empty shard or an uneven split where the realistic case, which has
    neither, fails the same way: a passing neighbour that stopped sharding (NO_SHARD, say) changed them too,
    and does not show that the failure needs them. (Needing *no* edge stays: the realistic case agrees.)"""
    if realistic != "same failure":
        return dict(necessary)
    return {
        label: value for label, value in necessary.items() if not (label.endswith(_EDGE_LABELS) and value == "true")
    }


#: The labels of a side's edges (``dimensions``), which the realistic case never has.
_EDGE_LABELS = ("_empty_shard", "_uneven_split")


def _derived(label: str) -> bool:
    """Whether a ``dimensions`` label follows from others (the sides differ; the optimizer keeps state; a
    width splits unevenly or leaves a rank empty) rather than being a value of the case's own."""
    return label in ("resharded", "optimizer_state") or label.endswith(_EDGE_LABELS)


def _necessary(changed: list[tuple[Neighbour, set[str], dict[str, str]]], before: dict[str, str]) -> dict[str, str]:
    """The case's value of every labelled dimension a passing neighbour changed, save those a neighbour changed
    and still failed the same way (an engine's change also changes its options' labels: the options' own
    neighbours say whether they matter). Where one change of a label passed and another failed the same way
    (AdamW -> SGD passes, AdamW -> Adam does not), the condition admits the values seen failing ("adam|adamw")."""
    failing: dict[str, set[str]] = {}
    for row, labels, after in changed:
        if row.outcome == "same failure":
            for label in labels:
                failing.setdefault(label, {before.get(label, "")}).add(after.get(label, ""))
    necessary = {}
    for row, labels, _ in changed:
        if row.outcome != "passes":
            continue
        for label in sorted(labels):
            if label not in before:
                continue
            if label not in failing:
                necessary[label] = before[label]
            elif not _derived(label) and row.dimension == label:  # the label's own change passed
                necessary[label] = one_of(failing[label])
    return necessary


def _free(changed: list[tuple[Neighbour, set[str], dict[str, str]]]) -> tuple[str, ...]:
    """The dimensions whose every neighbour that ran failed the same way."""
    outcomes: dict[str, set[str]] = {}
    for row, _, _ in changed:
        outcomes.setdefault(row.dimension, set()).add(row.outcome)
    return tuple(sorted(dimension for dimension, seen in outcomes.items() if seen == {"same failure"}))


def with_explanation(entry: Entry, explanation: Explanation) -> Entry:
    """``entry`` holding ``explanation``; a complete one also puts its necessary values into a known entry's
    ``when`` (a developer may narrow ``when`` further by hand; the measurement is never dropped from it) and
    takes "explanation" off the entry's unfinished phases."""
    known = entry.known
    unfinished = entry.unfinished
    if explanation.complete:
        unfinished = tuple(phase for phase in unfinished if phase != "explanation")
        if known is not None:
            known = attrs.evolve(known, when={**known.when, **explanation.necessary})
    elif "explanation" not in unfinished:
        unfinished = (*unfinished, "explanation")
    return attrs.evolve(entry, explanation=explanation, known=known, unfinished=unfinished)
