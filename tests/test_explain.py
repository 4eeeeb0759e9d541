"""Explaining a finding: its neighbours, what they measure, and the conditions a known entry keeps from them."""

import time
from pathlib import Path

import attrs
import pytest

from shardfuzz.case import DDP, FSDP1, FSDP2, SGD, Adam, AdamW, Case, Linear, Model, Sequential, Side, dimensions
from shardfuzz.case.conditions import wider_than
from shardfuzz.findings.corpus import entry_for, load_corpus
from shardfuzz.findings.explanation import Explanation, Neighbour
from shardfuzz.findings.known import Known
from shardfuzz.findings.known_table import reach
from shardfuzz.search.explain import explain_case, neighbours, realistic_case, with_explanation
from shardfuzz.verdict import RankError, Verdict

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASE = Case(
    model=Model(1, Sequential([Linear(1)])),
    save=Side(DDP(), (1,)),
    load=Side(FSDP1(), (2,)),
    optimizer=SGD(),
    steps=0,
)
ERROR = Verdict("error", errors=(RankError(0, "load", "KeyError", "'state'"),))
OTHER = Verdict("error", errors=(RankError(0, "save", "ValueError", "nope"),))


def fsdp1_load_with_sgd_fails(case: Case) -> Verdict:
    """A stand-in for the ranks: the bug needs FSDP1 on the load side and SGD; Adam fails another way."""
    if isinstance(case.optimizer, Adam):
        return OTHER
    fails = isinstance(case.load.engine, FSDP1) and isinstance(case.optimizer, SGD)
    return ERROR if fails else Verdict("pass")


def test_every_neighbour_changes_one_thing():
    rows = list(neighbours(CASE))
    assert {"load_engine", "save_engine", "optimizer", "steps", "widths", "linears", "load_world_size"} <= {
        dimension for dimension, _, _ in rows
    }
    for dimension, change, neighbour in rows:
        if neighbour is not None:
            assert neighbour != CASE, (dimension, change)


def test_the_explanation_says_what_the_failure_needs_and_what_varies_freely():
    explanation = explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails)
    assert explanation.necessary["load_engine"] == "fsdp1"
    assert explanation.necessary["optimizer"] == "sgd"
    assert "save_engine" in explanation.free and "steps" in explanation.free
    assert "optimizer" not in explanation.free  # Adam fails otherwise, the rest pass
    adam = next(row for row in explanation.neighbours if row.change == "SGD -> Adam")
    assert (adam.outcome, adam.detail) == ("other failure", OTHER.signature())
    assert explanation.realistic == "same failure" and explanation.bites_realistic_setups
    assert explanation.complete and "fails the same way at realistic widths" in explanation.summary()


def test_dcps_other_saves_and_writer_options_are_neighbours_and_their_failures_widen_the_condition():
    """8a9c527d met through DCP's async save counted as new: its conditions named the plain save alone, because
    no neighbour ever tried another DCP save. A bug of every DCP save (not of Hugging Face's storage) is now
    measured as one, and its writer options vary freely."""
    from shardfuzz.case import HfSafetensors

    rows = {change for _, change, neighbour in neighbours(CASE) if neighbour is not None}
    assert {"dcp save -> async", "dcp save -> legacy", "thread_count -> 2", "sync_files -> False"} <= rows

    def fails_through_any_dcp_save(case):
        return Verdict("pass") if isinstance(case.storage, HfSafetensors) else ERROR

    explanation = explain_case(CASE, ERROR.signature(), fails_through_any_dcp_save)
    assert explanation.necessary["storage"] == "dcp-async|dcp-legacy|dcp-save"
    assert {"writer_threads", "writer_sync_files", "writer_single_file_per_rank"} <= set(explanation.free)


def test_a_failure_that_needs_an_edge_says_which():
    def needs_a_narrow_layer(case):
        narrow = min(out for _, _, out, _ in case.model.linears()) < case.load.world_size
        return ERROR if narrow and isinstance(case.load.engine, FSDP1) else Verdict("pass")

    explanation = explain_case(CASE, ERROR.signature(), needs_a_narrow_layer)
    assert explanation.realistic == "passes" and explanation.bites_realistic_setups is False
    assert {"narrow", "one_element", "empty_shard"} <= set(explanation.edges)
    # Put back one at a time, mildest first: on 2 shards, an uneven split passes; a one-element layer fails.
    assert [(t.dimension, t.outcome) for t in explanation.edge_trials] == [
        ("uneven_split", "passes"),
        ("one_element", "same failure"),
    ]
    assert "fails the same way again with a layer of one element" in explanation.summary()


@pytest.mark.parametrize(
    "fails_on, needed",
    [
        (lambda case: any(w % 4 for _, _, w, _ in case.model.linears()), "uneven_split"),
        (lambda case: dimensions(case)["load_empty_shard"] == "true", "empty_shard"),
        (lambda case: min(w for _, _, w, _ in case.model.linears()) < 4, "narrow"),
        (lambda case: 1 in [w for _, _, w, _ in case.model.linears()], "one_element"),
    ],
)
def test_the_mildest_edge_that_brings_a_failure_back_is_measured(fails_on, needed):
    """On 4 shards each edge can be put back alone: the trials stop at the first that fails the same way."""
    case = attrs.evolve(CASE, load=Side(FSDP1(), (4,)), model=Model(1, Sequential([Linear(3), Linear(1)])))
    explanation = explain_case(case, ERROR.signature(), lambda c: ERROR if fails_on(c) else Verdict("pass"))
    assert explanation.realistic == "passes" and explanation.edge_needed.dimension == needed
    assert explanation.edge_trials[-1].dimension == needed


def test_the_realistic_case_splits_evenly_with_a_shard_on_every_rank():
    hsdp = attrs.evolve(CASE, load=Side(FSDP2(), (2, 2)), model=Model(3, Sequential([Linear(5), Linear(1)])))
    nearest = realistic_case(hsdp)
    dims = dimensions(nearest)
    assert dims["load_empty_shard"] == dims["load_uneven_split"] == "false"
    widths = [nearest.model.input_width] + [out for _, _, out, _ in nearest.model.linears()]
    assert min(widths) >= 8 * 2 and all(width % 4 == 0 for width in widths)


def test_an_explanation_cut_short_says_so():
    explanation = explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails, deadline=time.monotonic() - 1)
    assert not explanation.complete and explanation.neighbours == ()
    assert "cut short: `shardfuzz explain ENTRY` finishes it" in explanation.summary()


def test_a_known_entry_keeps_the_measured_conditions_in_its_when():
    entry = attrs.evolve(entry_for(CASE, ERROR), known=Known("x", ">=2.10", when={"load_world_size": "2"}))
    explanation = explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails)
    explained = with_explanation(entry, explanation)
    assert explained.known.when == {"load_world_size": "2", **explanation.necessary}
    cut = attrs.evolve(explanation, complete=False)
    assert with_explanation(entry, cut).known.when == {"load_world_size": "2"}  # a partial table widens nothing


def _explained_known_entries():
    entries, _ = load_corpus(CORPUS)
    return [
        pytest.param(entry, id=path.stem)
        for path, entry in entries
        if entry.known is not None and entry.explanation is not None and entry.explanation.complete
    ]


@pytest.mark.parametrize("entry", _explained_known_entries() or [pytest.param(None, marks=pytest.mark.skip)])
def test_a_known_entry_is_constrained_by_every_value_its_failure_needs(entry):
    """Each labelled dimension whose change made the case pass is in ``known.when``, admitting no value the
    measurement did not see fail: a ``when`` widened past the measurement would count a failure outside the
    bug's trigger as this bug."""
    wider = wider_than(entry.known.when, entry.explanation.necessary)
    assert not wider, f"known.when is wider than the measured conditions at {wider}"


def test_the_when_check_fails_on_a_widened_when():
    entry = attrs.evolve(entry_for(CASE, ERROR), known=Known("x", ">=2.10"))
    explained = with_explanation(entry, explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails))
    test_a_known_entry_is_constrained_by_every_value_its_failure_needs(explained)
    widened = attrs.evolve(explained, known=attrs.evolve(explained.known, when={}))
    with pytest.raises(AssertionError, match="wider than the measured conditions"):
        test_a_known_entry_is_constrained_by_every_value_its_failure_needs(widened)
    another_value = {**explained.known.when, "optimizer": "adam|sgd"}  # Adam was measured failing otherwise
    widened = attrs.evolve(explained, known=attrs.evolve(explained.known, when=another_value))
    with pytest.raises(AssertionError, match=r"wider than the measured conditions at \['optimizer'\]"):
        test_a_known_entry_is_constrained_by_every_value_its_failure_needs(widened)


def test_an_explained_known_bug_is_masked_from_the_first_draw_under_its_measured_conditions(tmp_path):
    """Steering masks an explained known bug from the start under the conditions its explanation measured
    (its ``known.when``), so the campaign spends no time finding it again; the corpus case's other values are
    there only to narrow the mask if a probe of it misses."""
    from shardfuzz.findings.corpus import save_entry
    from shardfuzz.search.run_config import RunConfig
    from shardfuzz.search.runner import _Run
    from shardfuzz.targets import DEFAULT_TARGET

    explanation = explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails)
    entry = with_explanation(attrs.evolve(entry_for(CASE, ERROR), known=Known("x", ">=2.0")), explanation)
    save_entry(tmp_path, entry)
    run = _Run(
        RunConfig(corpus=tmp_path, plain=True), target=DEFAULT_TARGET, torchrun=False, world_size=2, devices=("cpu",),
        database=None,
    )  # fmt: skip
    (expectation,) = run.expected().values()
    assert expectation.measured and dict(expectation.conditions) == entry.known.when
    assert expectation.conditions["load_engine"] == "fsdp1" and expectation.conditions["optimizer"] == "sgd"
    assert not set(expectation.conditions) & set(explanation.free)
    assert expectation.case == dimensions(CASE)


def test_a_value_the_failure_shares_with_some_changes_is_a_condition_on_them_all():
    """AdamW -> SGD passes but AdamW -> Adam fails the same way: the optimizer is a condition, met by either."""

    def adam_or_adamw_fails(case):
        return ERROR if type(case.optimizer).__name__ in ("Adam", "AdamW") else Verdict("pass")

    case = attrs.evolve(CASE, optimizer=AdamW())
    explanation = explain_case(case, ERROR.signature(), adam_or_adamw_fails)
    assert explanation.necessary["optimizer"] == "adam|adamw"
    assert "optimizer" not in explanation.free
    assert Known("x", ">=2.0", when=explanation.necessary).matches(attrs.evolve(CASE, optimizer=Adam()))
    assert not Known("x", ">=2.0", when=explanation.necessary).matches(CASE)  # SGD


def test_the_realistic_case_keeps_the_options_the_failure_needs():
    compiled = attrs.evolve(CASE, load=Side(FSDP1(), (2,), compiled=True, cpu_offload=True))
    kept = realistic_case(compiled, {"load_compiled": "true"})
    assert kept.load.compiled and not kept.load.cpu_offload  # needed: kept; not needed: its default
    assert not realistic_case(compiled).load.compiled


def test_what_sets_a_failure_apart_adds_the_values_whose_every_change_failed_otherwise():
    """Steering masks draws by what sets the failure apart: a value whose changes all fail another way is no
    condition of the bug (``when``), but a draw without it would not be a hit of it."""

    def trains_otherwise(case):
        if case.steps:
            return OTHER
        return ERROR if isinstance(case.load.engine, FSDP1) else Verdict("pass")

    explanation = explain_case(CASE, ERROR.signature(), trains_otherwise)
    assert "steps" not in explanation.necessary and explanation.necessary["load_engine"] == "fsdp1"
    telling = explanation.telling(dimensions(CASE))
    assert telling["steps"] == "0" and telling.items() >= explanation.necessary.items()
    assert not set(telling) & set(explanation.free)


def test_explain_records_nothing_for_an_entry_whose_case_does_not_fail_here(tmp_path, capsys):
    """An entry whose bug is fixed in what is installed (or that fails otherwise here) has nothing to explain:
    its neighbours would all pass, and a table of passes would read as 'needs every value'."""
    from shardfuzz.cli import main
    from shardfuzz.findings.corpus import save_entry

    passing = Case(
        model=Model(2, Sequential([Linear(2)])),
        save=Side(DDP(), (1,)),
        load=Side(DDP(), (1,)),
        optimizer=SGD(),
        steps=0,
    )
    path = save_entry(tmp_path, attrs.evolve(entry_for(passing, ERROR), known=Known("x", ">=2.0")))
    before = path.read_text()
    assert main(["explain", str(path)]) == 1
    assert "passes here: nothing to explain, nothing recorded" in capsys.readouterr().out
    assert path.read_text() == before


def test_an_explanation_cut_short_resumes_where_it_stopped():
    ran = []

    def counting(case):
        ran.append(case)
        return fsdp1_load_with_sgd_fails(case)

    whole = explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails)
    cut = attrs.evolve(whole, neighbours=whole.neighbours[:5], complete=False)
    resumed = explain_case(CASE, ERROR.signature(), counting, resume=cut)
    assert resumed.neighbours == whole.neighbours and resumed.necessary == whole.necessary and resumed.complete
    measured_before = sum(1 for row in cut.neighbours if row.outcome != "not supported")
    assert (
        len(ran)
        == len(list(neighbours(CASE)))
        - measured_before
        - sum(1 for row in whole.neighbours if row.outcome == "not supported")
        + 1
    )  # the neighbours not measured before, and the realistic case


def test_extend_runs_only_the_neighbours_a_complete_explanation_lacks():
    """``explain --extend``: an explanation made before a neighbour was added (steps 2, say) keeps its rows."""
    from shardfuzz.commands.explain import _resumable

    whole = attrs.evolve(explain_case(CASE, ERROR.signature(), fsdp1_load_with_sgd_fails), torch="2.13.0+cpu")
    entry = attrs.evolve(entry_for(CASE, ERROR), explanation=attrs.evolve(whole, neighbours=whole.neighbours[1:]))
    assert _resumable(entry, "2.13.0+cpu") is None  # complete: explained again from nothing unless extended
    assert _resumable(entry, "2.4.1") is None  # another torch: its rows say nothing here
    ran = []

    def counting(case):
        ran.append(case)
        return fsdp1_load_with_sgd_fails(case)

    extended = explain_case(CASE, ERROR.signature(), counting, resume=_resumable(entry, "2.13.0+cpu", extend=True))
    assert extended.neighbours == whole.neighbours and len(ran) == 2  # the missing row, and the realistic case


def test_an_fsdp1_strategy_that_needs_a_2d_mesh_is_a_neighbour_on_one():
    """HYBRID_SHARD on a 1-D mesh is refused by the data model: the neighbour takes the (1, n) mesh with it,
    so an explanation says whether HSDP fails too (a campaign met the full-offload crash there)."""
    case = attrs.evolve(CASE, load=Side(FSDP1(), (2,)))
    rows = {change: n for dimension, change, n in neighbours(case) if dimension == "load_sharding_strategy"}
    hybrid = rows["sharding_strategy -> 'HYBRID_SHARD' on mesh (1, 2)"]
    assert hybrid is not None and hybrid.load.mesh_shape == (1, 2)
    back = {change: n for dimension, change, n in neighbours(hybrid) if dimension == "load_sharding_strategy"}
    assert back["sharding_strategy -> 'FULL_SHARD' on mesh (2,)"].load.mesh_shape == (2,)


def test_a_strategy_row_that_took_the_mesh_with_it_is_the_strategys():
    """HYBRID_SHARD -> NO_SHARD on a flat mesh passes and -> FULL_SHARD fails the same way: the row belongs to
    the strategy, whose condition then admits the strategies seen failing (the mesh is not the strategy's)."""
    from shardfuzz.case import FSDP1

    hybrid = attrs.evolve(CASE, load=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (1, 2)))

    def no_shard_passes(case):
        if getattr(case.load.engine, "sharding_strategy", "NO_SHARD") == "NO_SHARD":  # and other engines
            return Verdict("pass")
        return ERROR

    explanation = explain_case(hybrid, ERROR.signature(), no_shard_passes)
    rows = [row for row in explanation.neighbours if "on mesh" in row.change]
    assert rows and {row.dimension for row in rows} == {"load_fsdp1_strategy"}
    assert set(explanation.necessary["load_fsdp1_strategy"].split("|")) == {
        "hybrid_shard",
        "_hybrid_shard_zero2",
        "full_shard",
        "shard_grad_op",
    }
    assert "load_mesh" not in explanation.necessary


def test_a_failure_that_the_realistic_case_shows_needs_no_edge():
    """NO_SHARD passes and changes the empty-shard and uneven-split labels with the strategy (other engines
    fail otherwise); the realistic case (even splits, a shard on every rank) fails the same way, so neither
    edge is a condition."""
    one = Model(1, Sequential([Linear(1, bias=False)]))
    case = attrs.evolve(CASE, load=Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (1, 4)), model=one)
    other = Verdict("error", errors=(RankError(0, "load", "KeyError", "another"),))

    def no_shard_passes(c):
        strategy = getattr(c.load.engine, "sharding_strategy", None)
        return other if strategy is None else Verdict("pass") if strategy == "NO_SHARD" else ERROR

    explanation = explain_case(case, ERROR.signature(), no_shard_passes)
    assert explanation.realistic == "same failure"
    assert not [label for label in explanation.necessary if label.endswith(("_empty_shard", "_uneven_split"))]


def test_the_tp_degree_is_a_neighbour_and_a_save_side_hang_keeps_its_pool_size():
    """A (1, tp) mesh gets the other tp degrees drawn (the README's 60 s run met the FSDP2 + TP gather hang at
    tp 3, outside a `when` measured at tp 2 only); a hang whose save side hangs is explained on its own pool."""
    from shardfuzz.case import TP
    from shardfuzz.commands.explain import _hangs_saving

    case = attrs.evolve(CASE, load=Side(TP(plan=(("0", "rowwise"),)), (1, 2)))
    degrees = {n.load.mesh_shape for d, change, n in neighbours(case) if change.startswith("tp ")}
    assert degrees == {(1, 3), (1, 4)}
    assert _hangs_saving("barrier,gather-saved") and not _hangs_saving("gather-before-load,load")


def test_a_side_of_another_engine_gets_tensor_parallel_and_pipelined_neighbours():
    """A bug explained from a DDP case must say whether TP and PP sides have it too: 1208a187's conditions left TP
    out, and the README's run met its TP form (274fc8c2) as a new finding. Each neighbour is a valid case."""
    from shardfuzz.case import PP, TP

    two = Model(2, Sequential([Linear(3), Linear(2)]))
    case = attrs.evolve(CASE, model=two, save=Side(DDP(), (2,)), param_groups=1)
    changed = {change: n for d, change, n in neighbours(case) if d == "save_engine"}
    tp = [n.save for change, n in changed.items() if "-> TP" in change]
    assert {s.engine.plan for s in tp} == {(("0", "colwise"),), (("0", "rowwise"),)}
    assert {s.mesh_shape for s in tp} == {(1, 2)}
    pp = [n for change, n in changed.items() if "-> PP" in change]
    assert pp and pp[0] is not None and isinstance(pp[0].save.engine, PP) and pp[0].save.mesh_shape == (2, 1)
    on_tp = attrs.evolve(case, save=tp[0])
    assert not [c for d, c, _ in neighbours(on_tp) if d == "save_engine" and "-> TP" in c]
    assert isinstance(tp[0].engine, TP)


@pytest.mark.parametrize(
    ("realistic", "trials", "says", "cell"),
    [
        ("passes", (), "passes at realistic widths (the shrunk case stands on: ", "passes at realistic widths (shrunk"),
        # Another failure at realistic widths came first: it says nothing of whether this bug is there (c43475c5's
        # realistic case failed in torchao's gather, and the bug bites a 4,096-wide vector on 8 ranks).
        ("other failure", (), "fails otherwise at realistic widths (", "fails otherwise at realistic widths (shrunk"),
        (
            "other failure",
            (Neighbour("one_element", "width 32 -> 1", "same failure"),),
            "fails otherwise at realistic widths; fails the same way again with a layer of one element",
            "fails otherwise at realistic widths; needs a layer of one element",
        ),
    ],
)
def test_reach_says_what_the_realistic_case_did(realistic, trials, says, cell):
    explanation = Explanation((), realistic=realistic, edges=("one_element",), edge_trials=trials)
    assert explanation.reach().startswith(says)
    entry = attrs.evolve(entry_for(CASE, ERROR), explanation=explanation)
    assert reach(entry).startswith(cell)
