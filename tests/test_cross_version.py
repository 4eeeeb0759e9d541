"""Saved under one torch, loaded under another: the two-run round-trip, its pools, what both torches offer,
the corpus's two-torch entries and their reproducers.

The default tier needs no second torch: a second *environment* is played by this Python with
another prefix (so its ranks start as another Python's would: its own path, this shardfuzz
linked in, no parent's main), and the two-run machinery runs on two pools of this torch. The
tests marked ``crossversion`` run only where ``SHARDFUZZ_OTHER_PYTHON`` names a Python with
another torch (``tox -e crossversion`` makes one with ``shardfuzz torch-env``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shardfuzz.capabilities import Capabilities, capabilities, common, in_force
from shardfuzz.case import DDP, FSDP1, SGD, Adam, Case, Linear, Model, Sequential, Side
from shardfuzz.executor.interpreters import Interpreter, InterpreterError, probe
from shardfuzz.findings.corpus import Entry, entry_for, known_bugs, load_entry, save_entry
from shardfuzz.findings.known import Known
from shardfuzz.findings.replay import replay_entries
from shardfuzz.rank.portable.handoff import handoff_path, read_handoff, write_handoff
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import RankError, Verdict

OTHER_PYTHON = os.environ.get("SHARDFUZZ_OTHER_PYTHON")


def needs_other_torch(test):
    skip = pytest.mark.skipif(
        not OTHER_PYTHON, reason="needs SHARDFUZZ_OTHER_PYTHON, a Python with another torch (tox -e crossversion)"
    )
    return pytest.mark.crossversion(skip(test))


CASE = Case(
    model=Model(2, Sequential([Linear(3), Linear(2)])),
    save=Side(FSDP1(), (2,)),
    load=Side(DDP(), (1,)),
    optimizer=Adam(),
    steps=1,
    checks=("continuation",),
)


def other_environment() -> Interpreter:
    """This Python, taken for another environment: its ranks start the way another Python's do."""
    here = probe(sys.executable)
    return attrs.evolve(here, prefix="/another/environment", sys_path=tuple(p for p in sys.path if p))


# --- what both torches offer --------------------------------------------------------


def caps(version: str, **changes) -> Capabilities:
    return dataclasses.replace(capabilities(), **{"torch_version": version, "off": dict(capabilities().off), **changes})


def test_common_keeps_what_both_offer_and_says_which_side_lacks_the_rest():
    old = caps("2.4.1", engines=("fsdp1", "ddp", "unsharded"), fsdp2_shard_dim=False, off={"engine fsdp2": "fails"})
    new = caps("2.13.0", engines=("fsdp1", "fsdp2", "ddp", "unsharded"), fsdp2_shard_dim=True, off={})
    both = common(old, new)
    assert both.engines == ("fsdp1", "ddp", "unsharded")
    assert not both.fsdp2_shard_dim
    assert both.off["engine fsdp2"] == "left out: the save side's torch 2.4.1 lacks it (fails)"
    assert both.off["fsdp2_shard_dim"].startswith("left out: the save side's torch")
    reverse = common(new, old)
    assert reverse.engines == ("fsdp1", "ddp", "unsharded")
    assert reverse.off["engine fsdp2"].startswith("left out: the load side's torch 2.4.1")
    assert both.torch_version == "2.4.1 -> 2.13.0"


def test_common_of_a_torch_with_itself_leaves_nothing_out():
    here = capabilities()
    assert common(here, here).engines == here.engines
    assert not [why for why in common(here, here).off.values() if why.startswith("left out")]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_cases_drawn_in_force_use_only_what_both_offer(data):
    from shardfuzz.strategies import cases

    old = caps("2.4.1", engines=("fsdp1", "ddp", "unsharded"), off={"engine fsdp2": "fails"})
    with in_force(common(old, capabilities())):
        case = data.draw(cases(max_world_size=2))
    assert type(case.save.engine).__name__ != "FSDP2" and type(case.load.engine).__name__ != "FSDP2"


def test_in_force_ends_with_its_block():
    before = capabilities()
    with in_force(caps("0.0", engines=("ddp",))):
        assert capabilities().engines == ("ddp",)
    assert capabilities() is before


# --- the handoff --------------------------------------------------------------------


def test_handoff_round_trips_plain_state(tmp_path):
    checkpoint = str(tmp_path / "case")
    expected = {"model.w": torch.arange(6.0).reshape(2, 3), "optim.param_groups.0.betas": (0.9, 0.99), "x": None}
    write_handoff(checkpoint, expected, None)
    saved_by, got, after = read_handoff(checkpoint)
    assert saved_by == str(torch.__version__) and after is None
    assert torch.equal(got["model.w"], expected["model.w"]) and got["optim.param_groups.0.betas"] == (0.9, 0.99)
    assert not handoff_path(checkpoint).startswith(checkpoint + os.sep)  # beside the checkpoint, not in it


class _Rogue:
    pass


def test_handoff_never_unpickles_an_object(tmp_path):
    checkpoint = str(tmp_path / "case")
    torch.save({"torch": "x", "expected": {"k": _Rogue()}, "expected_after": None}, handoff_path(checkpoint))
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        read_handoff(checkpoint)


def test_a_missing_handoff_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"saved-state\.pt: the save run left no saved state"):
        read_handoff(str(tmp_path / "case"))


# --- other Pythons ------------------------------------------------------------------


def test_probe_of_this_python_is_this_one():
    here = probe(sys.executable)
    assert here.is_this_one and here.torch_version == str(torch.__version__)
    assert here.capabilities.engines == capabilities().engines


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/no/such/python", "no such Python"),
        ("/bin/sh", "cannot run shardfuzz ranks"),  # runs, but not Python
    ],
)
def test_probe_names_a_python_that_cannot_run_ranks(python, message):
    with pytest.raises(InterpreterError, match=message):
        probe(python)


def test_run_refuses_a_python_that_cannot_run_ranks(tmp_path):
    from shardfuzz.cli import main

    code = main(["run", "--budget", "5", "--save-python", "/no/such/python", "--corpus", str(tmp_path)])
    assert code == 2


@pytest.mark.slow  # the default tier's two-pool tests start their save pool this way too
def test_ranks_started_in_another_environment_run_a_case():
    """The ranks of another environment get its path (here: this one's, as data), this shardfuzz through the
    linked folder, and no import of this process's main: they run the case as this Python's ranks do."""
    from shardfuzz.executor import RankPool

    with RankPool(2, interpreter=other_environment()) as pool:
        assert pool.run(CASE).status == "pass"


# --- two runs, two pools -------------------------------------------------------------


@pytest.mark.slow  # 11 s; phases.save_then_load and a fault in the load half: test_per_side_pools.py, 3 s
def test_two_pools_round_trip_a_case_and_catch_a_fault_in_the_load_run():
    """Saved on ranks of another environment, loaded on this one's: a correct load passes (the pools stay warm,
    and the case passes under each torch alone), and a fault in the load (a perturbed element where the load
    side has two ranks) is caught by complete-state. One pair of pools for both: they cost seconds to start."""
    from shardfuzz.executor.cross import CrossVersionPool

    faulty = attrs.evolve(CASE, load=Side(FSDP1(), (2,)))
    with CrossVersionPool(
        2, save=other_environment(), load=probe(sys.executable), target="faults:PerturbOnTwoRanks"
    ) as pool:
        verdicts = [pool.run(CASE) for _ in range(2)]
        alone = pool.alone(CASE)
        caught = pool.run(faulty)
    assert [v.status for v in verdicts] == ["pass", "pass"]
    assert pool.starts == 2
    assert {v.status for v in alone.values()} == {"pass"}
    assert caught.status == "mismatch" and caught.mismatches[0].oracle == "complete-state", caught.summary()


@pytest.mark.slow  # the default tier catches a fault across two pools in the test above
@pytest.mark.parametrize(
    ("fault", "oracle"),
    [("PerturbOneLoadedElement", "complete-state"), ("DropLastRankShard", "complete-state")],
)
def test_a_fault_in_the_load_run_is_caught_across_two_pools(fault, oracle):
    from shardfuzz.executor.cross import CrossVersionPool

    case = attrs.evolve(CASE, save=Side(FSDP1(), (1,)), load=Side(FSDP1(), (1,)))  # one rank a pool: cheap
    with CrossVersionPool(
        1, save=probe(sys.executable), load=other_environment(), target=f"shardfuzz.targets.mutants:{fault}"
    ) as pool:
        verdict = pool.run(case)
    assert verdict.status == "mismatch", verdict.summary()
    assert verdict.mismatches[0].oracle == oracle


@pytest.mark.slow  # a crash and a restart of the save pool
def test_a_failed_save_run_is_the_verdict_and_the_load_run_never_starts(tmp_path, monkeypatch):
    from shardfuzz.executor.cross import CrossVersionPool

    flag = tmp_path / "armed"
    flag.touch()
    monkeypatch.setenv("SHARDFUZZ_TEST_FAULT_FLAG", str(flag))  # before the ranks start: they inherit it
    with CrossVersionPool(2, save=other_environment(), load=probe(sys.executable), target="faults:ExitOnSave") as pool:
        verdict = pool.run(attrs.evolve(CASE, save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (2,))))
        assert verdict.status == "crash" and verdict.where == "save", verdict.summary()
        assert pool.load_pool._cases_since_start == 0


# --- the corpus -----------------------------------------------------------------------


LOAD_ERROR = Verdict("error", errors=(RankError(0, "load", "RuntimeError", "Missing key in checkpoint state_dict"),))


def two_torch_entry(**known) -> Entry:
    entry = entry_for(
        CASE,
        LOAD_ERROR,
        torches=("2.4.1+cu121", "2.13.0+cpu"),
        alone={"2.4.1+cu121": Verdict("pass"), "2.13.0+cpu": Verdict("pass")},
    )
    return attrs.evolve(entry, known=Known(**known)) if known else entry


def test_an_entry_found_across_two_torches_records_both_and_each_alone(tmp_path):
    entry = two_torch_entry()
    assert entry.torches == ("2.4.1+cu121", "2.13.0+cpu")
    assert entry.across_only and entry.alone == {"2.4.1+cu121": "pass", "2.13.0+cpu": "pass"}
    same = entry_for(
        CASE, LOAD_ERROR, torches=("2.4.1", "2.13.0"), alone={"2.4.1": LOAD_ERROR, "2.13.0": Verdict("pass")}
    )
    assert not same.across_only and "(fails alone under 2.4.1)" in same.title
    other = entry_for(CASE, LOAD_ERROR, torches=("2.4.1", "2.13.0"), alone={"2.4.1": Verdict("hang", detail="stuck")})
    assert other.across_only and other.alone["2.4.1"].startswith("fails otherwise: ")
    assert entry.title.startswith("[loud error] torch 2.4.1+cu121 -> 2.13.0+cpu")
    path = save_entry(tmp_path, entry)
    assert load_entry(path) == entry


@pytest.mark.parametrize(
    ("save_range", "load_range", "save", "load", "known"),
    [
        ("<2.5", ">=2.10", "2.4.1", "2.13.0", True),
        ("<2.5", ">=2.10", "2.13.0", "2.4.1", False),  # the other direction is another bug
        ("<2.5", ">=2.10", None, "2.13.0", False),  # one torch: a two-torch bug cannot happen
        ("", ">=2.10", None, "2.13.0", True),  # a one-torch bug on that torch
        ("", ">=2.10", "2.4.1", "2.13.0", True),  # ... and across, where either torch has it
        ("", ">=2.10", "2.4.1", "2.5.0", False),
    ],
)
def test_a_known_bug_applies_to_the_torches_of_its_sides(save_range, load_range, save, load, known):
    bug = Known(
        "a bug", torch=load_range, save_torch=save_range, upper={"save_torch": "fixed-in"} if save_range else {}
    )
    assert bug.applies_to(load, {}, save_torch=save) is known


def test_a_bad_save_torch_range_is_refused():
    with pytest.raises(ValueError, match=r"known\.save_torch"):
        Known("a bug", torch=">=2.10", save_torch="not a range")


def test_known_bugs_of_a_run_across_two_torches():
    across = two_torch_entry(description="x", torch=">=2.10", save_torch="<2.5", upper={"save_torch": "last-checked"})
    entries = [("a.json", across)]
    assert known_bugs(entries, "2.13.0", save_torch="2.4.1").lookup(across.signature) is across
    assert known_bugs(entries, "2.13.0").lookup(across.signature) is None


def test_a_two_torch_finding_is_not_merged_into_a_one_torch_entry(tmp_path):
    one = entry_for(CASE, LOAD_ERROR)
    first = save_entry(tmp_path, one)
    second = save_entry(tmp_path, two_torch_entry())
    assert first != second


class _OneTorchPool:
    torches = None

    def cannot_run(self, case):
        return ""

    def run(self, case):  # pragma: no cover - never reached for a two-torch entry
        raise AssertionError("ran a two-torch entry on one torch")


def test_replay_skips_a_two_torch_entry_on_one_torch_and_says_how():
    (replay,) = replay_entries([("e.json", two_torch_entry())], lambda target, n: _OneTorchPool())
    assert replay.outcome == "skipped"
    assert "--save-python and --load-python" in replay.skipped and "2.4.1+cu121" in replay.skipped


def test_export_of_a_two_torch_entry_says_how_to_run_each_half(tmp_path):
    from shardfuzz.findings.export import export_script

    script = export_script(two_torch_entry())
    assert "--phase save --dir" in script and "--phase load --dir" in script
    assert "SAVE_TORCH = '2.4.1+cu121'" in script


@pytest.mark.slow  # two scripts, each starting torch and its ranks; tox -e crossversion runs real pairs
def test_exported_phases_reproduce_across_two_runs(tmp_path):
    """The script's --phase save, then --phase load on the same folder, with a fault in the loaded values:
    the load run finds it (here both runs use this torch)."""
    from shardfuzz.findings.export import export_script

    entry = attrs.evolve(two_torch_entry(), target="shardfuzz.targets.mutants:PerturbOneLoadedElement")
    entry = attrs.evolve(entry, case=attrs.evolve(CASE, save=Side(FSDP1(), (1,)), load=Side(FSDP1(), (1,))))
    script = tmp_path / "repro.py"
    script.write_text(export_script(entry))
    folder = tmp_path / "shared"
    saved = subprocess.run(
        [sys.executable, str(script), "--phase", "save", "--dir", str(folder)], capture_output=True, text=True
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert "now run --phase load" in saved.stdout
    loaded = subprocess.run(
        [sys.executable, str(script), "--phase", "load", "--dir", str(folder)], capture_output=True, text=True
    )
    assert loaded.returncode == 1 and "REPRODUCED" in loaded.stderr, loaded.stderr[-2000:]


def test_an_exported_phase_without_a_folder_is_refused(tmp_path):
    from shardfuzz.findings.export import export_script

    script = tmp_path / "repro.py"
    script.write_text(export_script(two_torch_entry()))
    done = subprocess.run([sys.executable, str(script), "--phase", "save"], capture_output=True, text=True)
    assert done.returncode == 2 and "need the same --dir" in done.stderr


# --- torch-env ------------------------------------------------------------------------


def test_torch_env_refuses_a_version_that_is_not_one(tmp_path, monkeypatch, capsys):
    from shardfuzz.cli import main

    monkeypatch.setenv("SHARDFUZZ_TORCH_ENVS", str(tmp_path))
    assert main(["torch-env", "latest"]) == 2
    assert "'latest' is not a torch version" in capsys.readouterr().err


def test_torch_env_reuses_an_environment_with_that_torch(tmp_path, monkeypatch, capsys):
    """An environment already holding the torch asked for is printed, not made again."""
    from shardfuzz.cli import main
    from shardfuzz.executor import torch_envs

    monkeypatch.setenv("SHARDFUZZ_TORCH_ENVS", str(tmp_path))
    version = str(torch.__version__).split("+")[0]
    python = torch_envs.python_of(version)
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    this = probe(sys.executable)  # before subprocess is stubbed: alone, the probe is not cached yet
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))  # no venv, no pip
    monkeypatch.setattr(torch_envs, "probe", lambda path: attrs.evolve(this, python=path))
    assert main(["torch-env", version]) == 0
    assert capsys.readouterr().out.strip() == str(python)


# --- with a second torch (tox -e crossversion) -------------------------------------------


@needs_other_torch
@pytest.mark.parametrize("direction", ["other saves", "this saves"])
def test_a_round_trip_across_torches_judges_the_load(direction):
    """Whatever the two torches do with the case, the verdict is a judged one: a pass, or a failure named by
    its phase and oracle (never a harness error such as a handoff that does not read)."""
    from shardfuzz.executor.cross import CrossVersionPool

    other, here = probe(OTHER_PYTHON), probe(sys.executable)
    save, load = (other, here) if direction == "other saves" else (here, other)
    with CrossVersionPool(2, save=save, load=load) as pool:
        verdict = pool.run(attrs.evolve(CASE, optimizer=SGD()))
    assert verdict.status in ("pass", "error", "mismatch"), verdict.summary()
    assert "take-over" not in verdict.summary() and "hand-off" not in verdict.summary()


@needs_other_torch
def test_a_fault_is_caught_across_torches():
    from shardfuzz.executor.cross import CrossVersionPool

    case = attrs.evolve(CASE, optimizer=SGD(), save=Side(FSDP1(), (2,)), load=Side(FSDP1(), (2,)))
    with CrossVersionPool(
        2,
        save=probe(OTHER_PYTHON),
        load=probe(sys.executable),
        target="shardfuzz.targets.mutants:PerturbOneLoadedElement",
    ) as pool:
        verdict = pool.run(case)
    assert verdict.status in ("mismatch", "error"), verdict.summary()


@needs_other_torch
def test_a_short_campaign_across_torches_reports_what_it_left_out(tmp_path):
    report = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "shardfuzz", "run", "--budget", "40", "--world-size", "2", "--database", "none",
         "--corpus", str(tmp_path / "corpus"), "--report", str(report), "--plain", "--exit-zero",
         "--save-python", OTHER_PYTHON],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["cases_run"] > 0
    assert str(probe(OTHER_PYTHON).torch_version) in data["across_torches"]["save"]
    assert isinstance(data["across_torches"]["left_out"], dict)


def _corpus_pairs():
    """The corpus's entries found across two torches, as pytest params (replayed where the pair is at hand)."""
    from shardfuzz.findings.corpus import load_corpus

    entries, _ = load_corpus(os.path.join(os.path.dirname(__file__), "..", "corpus"))
    return [pytest.param(path, entry, id=path.stem) for path, entry in entries if entry.torches is not None]


@needs_other_torch
@pytest.mark.parametrize(("path", "entry"), _corpus_pairs())
def test_a_two_torch_corpus_entry_still_fails_as_recorded(path, entry, tmp_path):
    """Each two-torch entry whose torches are this one and SHARDFUZZ_OTHER_PYTHON's, replayed across them and
    from its exported script's two phases: a known bug must still fail with its signature (a pass means torch
    fixed it: update the entry's ranges)."""
    from shardfuzz.executor.cross import CrossVersionPool
    from shardfuzz.findings.export import export_script

    other, here = probe(OTHER_PYTHON), probe(sys.executable)
    by_version = {str(other.torch_version): other, str(here.torch_version): here}
    if not set(entry.torches) <= set(by_version):
        pytest.skip("found across torch {} and {}: not these two".format(*entry.torches))
    save, load = (by_version[v] for v in entry.torches)
    with CrossVersionPool(entry.replay_world_size, save=save, load=load, target=entry.target) as pool:
        verdict = pool.run(entry.case)
    assert verdict.signature() == entry.signature, verdict.summary()
    if entry.status == "hang":
        return  # the script's watchdog waits its whole deadline; the pool's replay above is the check
    script, folder = tmp_path / "repro.py", tmp_path / "shared"
    script.write_text(export_script(entry))
    saved = subprocess.run([save.python, script, "--phase", "save", "--dir", folder], capture_output=True, text=True)
    if entry.cause is not None and entry.cause.phase.startswith("save"):
        assert saved.returncode == 1 and "REPRODUCED" in saved.stderr, saved.stderr[-2000:]
        return
    assert saved.returncode == 0, saved.stderr[-2000:]
    loaded = subprocess.run([load.python, script, "--phase", "load", "--dir", folder], capture_output=True, text=True)
    assert loaded.returncode == 1 and "REPRODUCED" in loaded.stderr, loaded.stderr[-2000:]


# --- judging across torches -------------------------------------------------------------


def test_a_hyperparameter_only_one_torch_has_is_not_the_checkpoints():
    from shardfuzz.rank.portable.handoff import one_torch_hyperparameters

    saved = {"optim.param_groups.0.weight.lr": 0.1, "model.w": torch.zeros(1)}
    loaded = {**saved, "optim.param_groups.0.weight.decoupled_weight_decay": False}
    assert one_torch_hyperparameters(saved, loaded) == {"optim.param_groups.0.weight.decoupled_weight_decay"}
    assert one_torch_hyperparameters(loaded, saved) == {"optim.param_groups.0.weight.decoupled_weight_decay"}
    # a hyperparameter both torches know, lost from one group, stays a finding
    dropped = {k: v for k, v in saved.items() if not k.endswith(".lr")} | {"optim.param_groups.1.bias.lr": 0.1}
    assert one_torch_hyperparameters(saved, dropped) == set()


def test_continuation_across_torches_allows_kernel_drift_and_catches_a_fault():
    """Across torches the continued parameters compare within a tolerance, the counters exactly, and the
    moments not at all (noise there is another torch's rounding; complete-state judged them after the load)."""
    from shardfuzz.rank.oracles import continuation

    saved = {
        "model.0.weight": torch.tensor([0.5, -0.25]),
        "optim.state.0.weight.step": torch.tensor(3.0),
        "optim.state.0.bias.momentum_buffer": torch.tensor([9.861945727607235e-05]),  # noise, under 2.10.0
    }
    drifted = {  # the same two steps under 2.13.0
        "model.0.weight": torch.tensor([0.5001, -0.25]),
        "optim.state.0.weight.step": torch.tensor(3.0),
        "optim.state.0.bias.momentum_buffer": torch.tensor([0.00010944366658804938]),
    }
    reset_step = {**drifted, "optim.state.0.weight.step": torch.tensor(1.0)}
    unused_state = {**drifted, "model.0.weight": torch.tensor([0.45, -0.25])}
    judge = functools.partial(continuation, saved, rank=0, identical_layout=True)
    assert judge(drifted)  # one torch, same layout: bit for bit
    assert not judge(drifted, across_torches=True)
    assert [m.key for m in judge(reset_step, across_torches=True)] == ["optim.state.0.weight.step"]
    assert [m.key for m in judge(unused_state, across_torches=True)] == ["model.0.weight"]


def test_noise_steps_scale_the_adaptive_slack_across_layouts_and_torches():
    from shardfuzz.case import RMSprop
    from shardfuzz.rank.roundtrip import _adaptive_lr

    # RMSprop's noise step is 10 learning rates within one torch too (a BatchNorm bias moved 0.077 at
    # lr 0.01 between two layouts of the seed-41 campaign)
    assert _adaptive_lr(attrs.evolve(CASE, optimizer=RMSprop(lr=0.01))) == pytest.approx(0.1)
    assert _adaptive_lr(attrs.evolve(CASE, optimizer=SGD())) is None


def test_a_run_across_torches_says_so_in_its_headline_and_summary():
    from shardfuzz.findings.render import headline, markdown

    report = {
        "cases_run": 10, "wall_seconds": 5.0, "passed": 9, "failures": [], "known_failures": [],
        "torch": "2.13.0+cpu", "unsupported": {}, "coverage": {}, "coverage_offered": {},
        "across_torches": {
            "save_torch": "2.10.0+cu128", "load_torch": "2.13.0+cpu", "save": "torch 2.10.0+cu128 (...)",
            "load": "torch 2.13.0+cpu (...)", "continuation": "within its tolerance",
            "left_out": {"fsdp1_subgroups": "left out: the save side's torch 2.10.0+cu128 lacks it"},
        },
    }  # fmt: skip
    assert "saved under torch 2.10.0+cu128, loaded under torch 2.13.0+cpu" in headline(report)
    assert "left out (one torch lacks it): fsdp1_subgroups" in markdown(report)


def test_shrink_of_a_two_torch_entry_asks_for_both_pythons(tmp_path, capsys):
    from shardfuzz.cli import main

    path = save_entry(tmp_path, two_torch_entry())
    assert main(["shrink", str(path)]) == 2
    assert "give --save-python and --load-python" in capsys.readouterr().err


class _StoppingPool:
    """A cross-version executor whose runs are abandoned: the run is stopping."""

    def alone(self, case):
        from shardfuzz.executor import CaseAbandoned

        raise CaseAbandoned("abandoned the case in flight")


def test_a_finding_across_torches_is_saved_even_when_the_run_stops_before_it_runs_alone(tmp_path):
    """No lost corpus entry: the runs under each torch alone come after the finding, and a stop (the budget's
    end, a signal) during them leaves the entry saved without their outcomes."""
    from shardfuzz.findings.campaign_result import Finding
    from shardfuzz.findings.corpus import load_corpus
    from shardfuzz.search.run_config import RunConfig
    from shardfuzz.search.runner import _Run

    run = _Run(
        RunConfig(corpus=tmp_path, plain=True), target=DEFAULT_TARGET, torchrun=False, world_size=2,
        devices=("cpu",), database=None, interpreters=(probe(sys.executable), other_environment()),
    )  # fmt: skip
    run.executor = _StoppingPool()
    run.on_finding(Finding(CASE, LOAD_ERROR))
    ((_, entry),) = load_corpus(tmp_path)[0]
    assert entry.torches is not None and entry.alone == {}
