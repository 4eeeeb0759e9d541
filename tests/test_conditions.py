"""Conditions on a case's dimensions: one value or several, a bug's conditions from its entries', and the
masks that keep measured conditions."""

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from shardfuzz.case import DDP, FSDP1, FSDP2, SGD, Adam, Case, Linear, Model, Sequential, Side, dimensions
from shardfuzz.case.conditions import compatible, generalize, meets, one_of, wider_than
from shardfuzz.findings.bugs import apart
from shardfuzz.findings.corpus import KnownBugs, entry_for, load_corpus
from shardfuzz.findings.known import Known
from shardfuzz.search.steering import Expectation, Steering, _probe
from shardfuzz.verdict import RankError, Verdict

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
ERROR = Verdict("error", errors=(RankError(0, "load", "KeyError", "'state'"),))


def _case(load_ranks: int = 2, *, engine=None, optimizer=None, steps: int = 0) -> Case:
    return Case(
        model=Model(1, Sequential([Linear(1)])),
        save=Side(DDP(), (1,)),
        load=Side(engine or FSDP1(), (load_ranks,)),
        optimizer=optimizer or SGD(),
        steps=steps,
    )


def test_a_condition_admits_one_value_or_any_of_several():
    dims = {"optimizer": "adam", "load_engine": "fsdp1"}
    assert meets(dims, {"optimizer": "adam"}) and meets(dims, {"optimizer": one_of(["adamw", "adam"])})
    assert not meets(dims, {"optimizer": "adamw"}) and not meets(dims, {"steps": "0"})
    assert one_of(["b", "a", "b"]) == "a|b"
    assert compatible({"optimizer": "adam|sgd"}, {"optimizer": "sgd", "steps": "1"})
    assert not compatible({"optimizer": "adam|adamw"}, {"optimizer": "sgd"})
    assert wider_than({"optimizer": "adam|sgd"}, {"optimizer": "adam|adamw", "steps": "0"}) == ["optimizer", "steps"]
    assert wider_than({"optimizer": "adam", "steps": "0", "dtype": "float32"}, {"optimizer": "adam|adamw"}) == []


@pytest.mark.parametrize(
    "whens, general",
    [
        ([], {}),
        ([{"a": "1", "b": "2"}], {"a": "1", "b": "2"}),
        ([{"a": "1", "b": "2"}, {"a": "1", "b": "3"}], {"a": "1"}),  # each needs one value, not the same one
        ([{"a": "1", "b": "2"}, {"a": "1"}], {"a": "1"}),  # one entry fails without b being measured
        ([{"a": "1|2"}, {"a": "3"}], {"a": "1|2|3"}),  # a measured set grows by the other's value
    ],
)
def test_a_bugs_conditions_are_what_its_entries_conditions_share(whens, general):
    assert generalize(whens) == general


def _entry(when: dict, bug: str, load_ranks: int = 2):
    case = _case(load_ranks)
    return attrs.evolve(entry_for(case, ERROR), known=Known("x", ">=2.0", when=when, bug=bug))


def test_a_failure_is_its_bugs_where_it_meets_the_conditions_the_bugs_entries_share():
    """Two entries of one bug, found at 3 and 4 load ranks: a third world size with the rest of their shared
    conditions is that bug, not a new one; a case outside what they share is new."""
    three = _entry({"load_engine": "fsdp1", "load_world_size": "3"}, "narrow")
    four = _entry({"load_engine": "fsdp1", "load_world_size": "4"}, "narrow")
    known = KnownBugs({three.signature: [three, four]})
    assert known.lookup(ERROR.signature(), _case(2)) is three  # its bug's first entry
    assert known.lookup(ERROR.signature(), _case(4)) is four  # the entry whose own when it meets
    assert known.lookup(ERROR.signature(), _case(2, engine=FSDP2())) is None
    alone = KnownBugs({three.signature: [three]})
    assert alone.lookup(ERROR.signature(), _case(2)) is None  # one entry: its own conditions


def test_a_failure_two_bugs_could_be_is_new_and_the_pair_is_listed():
    first = _entry({"load_engine": "fsdp1"}, "one")
    second = _entry({"optimizer": "sgd"}, "two")
    known = KnownBugs({first.signature: [first, second]})
    assert known.lookup(ERROR.signature(), _case(2)) is None
    assert known.lookup(ERROR.signature(), _case(2, optimizer=Adam())) is first
    assert len(apart([(Path("a.json"), first), (Path("b.json"), second)])) == 1


def test_where_two_bugs_match_the_one_an_entry_of_which_measured_the_case_is_it():
    # A bug of two entries sharing no label generalizes to no condition and matches every case; an entry of
    # another bug whose own conditions the case meets decides (run Y counted a known DeepSpeed bug as new).
    apart_entries = [_entry({"optimizer": "sgd"}, "wide"), _entry({"load_world_size": "4"}, "wide")]
    measured = _entry({"load_engine": "fsdp1"}, "narrow")
    known = KnownBugs({measured.signature: [*apart_entries, measured]})
    assert known.lookup(ERROR.signature(), _case(2, optimizer=Adam())) is measured
    assert known.lookup(ERROR.signature(), _case(2)) is None  # an entry of each bug measured it: still ambiguous
    assert known.lookup(ERROR.signature(), _case(2, engine=FSDP2(), optimizer=Adam())) is apart_entries[0]


#: The pairs of the corpus's bugs that one failure could match both of, each looked at: a failure meeting both
#: is reported as new (``KnownBugs.lookup``). A new pair here is a new overlap to triage, or a `when` too wide.
OVERLAPS = {
    ("af1e26da2fe3e2f3", "ecf9b334b50207a3"),  # a stateless optimizer's DCP -> torch.save into compiled FSDP1
    ("af1e26da2fe3e2f3", "fce9cde2f24184f1"),  # ... into FSDP1 with activation checkpointing
    # a module without gradients loaded into FSDP1 with activation checkpointing before it: both causes apply
    ("6ddb8a9ec9add59c, d44980369a881cb7", "75939f7e4df651f3"),
    # DCP's 'Missing key ... <fqn>' from a module without gradients and from a full offloaded state dict that a group
    # without global rank 0 gets empty: both causes apply to a case with both
    ("1426e2c61f76014a, d1d15c176a3f0d88", "9a799b3a435a53f5"),
    # the second load's 'Missing key ... <fqn>' from a held load-side state dict DSD renamed, and from a late group
    # without gradients: both causes apply to a case with both
    ("43819bad5d90d77f, 7e9058e0a5c441eb", "4ccffcf031c523da"),
    # FSDP1's 'Differing optimizer state types' from a gradless parameter's empty state and from a low-bit AdamW's
    # plain and quantised states in one flat parameter: both causes apply to a case with both
    ("48b712cbd0684a75", "6f5286b9613b0f93"),
    # the second load's KeyError '<fqn>' from a late Adagrad group's state and from the renaming a compiled FSDP1 save
    # side's load does: both causes apply to a case with both
    ("25901b888c3857f8", "aed36067f9cfbbb7"),
    # a hang in FSDP1's incompatible load from ranks that raise where others go on: the extra layer's optimizer state
    # on some ranks, and a low-bit AdamW's state quantised on some ranks' pieces: both causes apply to a case with both
    ("034e7a7f744bf5f1, d01a235051750c91", "8fdddffe6022cf01"),
}


def test_the_corpus_bugs_one_failure_could_match_both_of_are_the_ones_looked_at():
    entries, problems = load_corpus(CORPUS)
    assert not problems
    found = {
        tuple(sorted(part.split(" (")[0] for part in clash.split(": ")[0].split(" and "))) for clash in apart(entries)
    }
    assert found == OVERLAPS


def test_a_measured_mask_keeps_its_conditions_and_narrows_with_its_case_after_a_miss():
    steering = Steering(after=3)
    case = dimensions(_case(2, steps=1))
    steering.expect("bug", Expectation({"load_engine": "fsdp1"}, measured=True, case=case, costly=False))
    assert steering.masks["bug"] == {"load_engine": "fsdp1"}
    miss = _case(2, steps=3)  # meets the mask, but the bug needs one step (a value of its case)
    steering.observe(miss, None)
    assert steering.masks["bug"]["load_engine"] == "fsdp1" and steering.masks["bug"]["steps"] == "1"
    assert steering.wanted(miss) and steering.wanted(_case(2, engine=FSDP2()))
    hidden = _case(2, steps=1)
    assert not steering.wanted(hidden) or _probe(hidden)


def test_a_bug_met_through_two_sides_is_masked_in_each_form_and_learns_a_third():
    from shardfuzz.verdict import FORM

    steering = Steering(after=1)
    steering.expect("bug", Expectation({"load_engine": "fsdp2"}, measured=True, costly=False))
    steering.expect(f"bug{FORM}1", Expectation({"load_engine": "fsdp1", "steps": "1"}, measured=True, costly=False))
    hidden = [_case(2, engine=FSDP2()), _case(2, steps=1)]
    assert all(not steering.wanted(case) or _probe(case) for case in hidden)
    steering.observe(_case(2, steps=1), "bug")  # a hit of the second form confirms that form only
    assert steering.confirmed[f"bug{FORM}1"] == 1 and steering.confirmed["bug"] == 0
    outside = _case(4, engine=DDP())  # a hit in neither form: the run learns a mask for it
    for _ in range(2):
        steering.observe(outside, "bug")
    assert steering.masks[f"bug{FORM}learned"]["load_engine"] == "ddp"
    assert steering.masks["bug"] == {"load_engine": "fsdp2"}


def test_a_bugs_forms_are_its_entries_that_need_the_same_engines():
    from shardfuzz.search.expectations import forms as _forms

    load = _entry({"load_engine": "tp", "load_world_size": "3"}, "narrow")
    load_too = _entry({"load_engine": "tp", "load_world_size": "4"}, "narrow")
    save = _entry({"save_engine": "tp"}, "narrow")
    assert _forms([load, save, load_too]) == [[load, load_too], [save]]


def test_entries_of_one_engine_that_need_other_dimensions_are_other_forms():
    # Generalized into one form, they would keep only what they share: a mask on every FSDP1 flat-parameter save.
    from shardfuzz.search.expectations import forms as _forms

    hsdp = _entry({"save_engine": "fsdp1", "save_fsdp1_use_orig_params": "false", "save_mesh": "2d"}, "narrow")
    group = _entry(
        {"save_engine": "fsdp1", "save_fsdp1_use_orig_params": "false", "group_without_rank0": "true"}, "narrow"
    )
    wider = _entry({"save_engine": "fsdp1", "save_fsdp1_use_orig_params": "false", "save_mesh": "2d|1d"}, "narrow")
    assert _forms([hsdp, group, wider]) == [[hsdp, wider], [group]]


def test_a_costly_finding_that_is_not_a_bug_is_steered_around_without_probes():
    draws = [
        attrs.evolve(_case(2, steps=steps), model=Model(1, Sequential([Linear(width)])))
        for width in range(1, 301)  # 1,200 draws: at the rarest rate (1 in 160) a few are probes, whatever the repr
        for steps in range(4)
    ]
    probes = {}
    for probed in (True, False):
        steering = Steering(after=1)
        steering.expect("hang", Expectation({"load_engine": "fsdp1"}, measured=True, costly=True, probed=probed))
        wanted = sum(steering.wanted(case) for case in draws)
        probes[probed] = (wanted, steering.probes["hang"])
    assert probes[True][0] == probes[True][1] > 0  # a bug's mask is probed, at the rarest rate
    assert probes[False] == (0, 0)


_MASK_IN_A_FRESH_PROCESS = """
from shardfuzz.case.conditions import generalize
from shardfuzz.search.steering import separating_conditions
labels = [f"label_{i}" for i in range(12)]
whens = [{label: "a|b" for label in labels}, {label: "a" for label in labels}]
general = generalize(whens)
# every condition rules out the one other case alike: the pick is a tie, broken by the conditions' order
mask = separating_conditions(general, 3, [{label: "c" for label in labels}])
print(list(general), list(mask))
"""


def test_a_masks_conditions_do_not_depend_on_the_processs_string_hashes():
    # A seed repeats a run's draws only if its masks do: Python orders a set of strings by a hash that
    # differs per process (PYTHONHASHSEED), and a mask's greedy pick breaks ties by its conditions' order.
    outputs = {
        subprocess.run(
            [sys.executable, "-c", _MASK_IN_A_FRESH_PROCESS],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in range(4)
    }
    assert len(outputs) == 1, outputs
