"""Exported reproducers need only torch and reproduce what the pool saw, in both launch modes."""

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    PP,
    SGD,
    TP,
    Adam,
    BatchNorm,
    Block,
    Case,
    Dcp,
    Experts,
    HfSafetensors,
    LayerNorm,
    Linear,
    Loop,
    Model,
    Sequential,
    Side,
)
from shardfuzz.findings.corpus import entry_for, load_corpus
from shardfuzz.findings.export import export_script
from shardfuzz.verdict import Mismatch, Verdict, normalise_message

RECORDED = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))

pytestmark = pytest.mark.ranks

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
#: Oracles the exported script runs outside its compare phase, and the phase it reports them in.
SCRIPT_PHASE = {"loud-incompatible-load": "load-incompatible"}
#: Oracles an exported script does not run yet, with why its entry cannot reproduce from one.
SCRIPT_CANNOT_JUDGE = {
    "replica-consistency": "exported scripts judge rank 0's gathered state, not each replica's: the "
    "replica-consistency oracle is the pool's only (the same bug's complete-state entries reproduce)",
}
TESTS = Path(__file__).resolve().parent


def _run(script: Path, *, torchrun: bool = False, nproc: int = 1, pythonpath: str = "", hang_seconds=None):
    # No shardfuzz on the path: the script must stand on torch alone.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if hang_seconds is not None:
        env["SHARDFUZZ_HANG_SECONDS"] = str(hang_seconds)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if torchrun
        else [sys.executable]
    )
    proc = subprocess.run(
        launcher + [str(script)], capture_output=True, text=True, timeout=240, cwd=script.parent, env=env
    )
    return proc.returncode, proc.stdout + proc.stderr


def _known_entries():
    """Every known entry; the first mismatch, error and crash in the default tier, the rest (hangs among
    them: a deadline each) in the slow one (each script starts torch and its ranks afresh)."""
    entries, _ = load_corpus(CORPUS)
    known = [(path, entry) for path, entry in sorted(entries, key=lambda e: e[0]) if entry.known_on(torch.__version__)]
    first_of_status = {}
    for path, entry in known:
        if entry.status != "hang":
            first_of_status.setdefault(entry.status, path)
    return [
        pytest.param(entry, id=path.stem, marks=() if path in first_of_status.values() else pytest.mark.slow)
        for path, entry in known
    ]


@pytest.mark.parametrize("entry", _known_entries())
def test_every_known_bug_reproduces_from_its_exported_script(entry, tmp_path):
    if entry.cause is not None and entry.cause.name in SCRIPT_CANNOT_JUDGE:
        pytest.skip(SCRIPT_CANNOT_JUDGE[entry.cause.name])
    script = tmp_path / "repro.py"
    script.write_text(export_script(entry))
    # A hang shows within seconds; the script's own watchdog (the case's deadline x 1.5) is for users.
    code, output = _run(script, hang_seconds=12 if entry.status == "hang" else None)
    assert code == 1, output
    if entry.status == "crash":
        assert "REPRODUCED: a rank died: process" in output and entry.cause.name in output, output[-3000:]
    elif entry.status == "hang":
        assert "REPRODUCED on rank" in output and "hang: still in" in output, output[-3000:]
    elif entry.status == "mismatch":
        # the script's phase for the oracle: compare, its own name (api-parity, ...), or load-incompatible
        phase = SCRIPT_PHASE.get(entry.cause.name, "compare")
        assert (
            f"REPRODUCED on rank 0 in {phase}: AssertionError: {entry.cause.name}" in output
            or f"in {entry.cause.name}: AssertionError: {entry.cause.name}" in output
        ), output[-3000:]
    else:
        expected = f"in {entry.cause.phase}: {entry.cause.name}"
        # addresses and numbers in the message differ between runs: compare them blanked
        blanked = [normalise_message(line) for line in output.splitlines()]
        assert expected in output and any(normalise_message(entry.cause.message) in b for b in blanked), output[-3000:]


@pytest.mark.parametrize("torchrun", [False, True], ids=["python", "torchrun"])
def test_a_passing_case_does_not_reproduce(tmp_path, torchrun):
    # Norm layers (BatchNorm's buffers, same batch on every rank) and a frozen Linear: the script must build
    # and train exactly as the ranks do, or the passing case would "reproduce".
    case = Case(
        model=Model(
            3, Block([Linear(5), BatchNorm(), Sequential([Linear(2, bias=False, frozen=True), LayerNorm(), Linear(2)])])
        ),
        save=Side(FSDP2(), (2,), wrap=("a",)),
        load=Side(FSDP1(), (1,)),
        optimizer=Adam(),
        steps=2,
    )
    script = tmp_path / "repro.py"
    script.write_text(export_script(entry_for(case, RECORDED)))
    code, output = _run(script, torchrun=torchrun, nproc=2)
    assert code == 0, output
    assert "did not reproduce" in output
    assert "Traceback" not in output, output[-3000:]  # e.g. asking for the rank after destroy_process_group


def test_a_mismatch_in_a_users_target_reproduces_under_torchrun(tmp_path):
    case = Case(
        model=Model(2, Sequential([Linear(3)])),
        save=Side(FSDP1(), (1,)),
        load=Side(FSDP2(), (2,)),
        optimizer=SGD(),
        steps=1,
    )
    entry = entry_for(case, RECORDED, target="faults:PerturbOneLoadedElement")
    script = tmp_path / "repro.py"
    script.write_text(export_script(entry))
    code, output = _run(script, torchrun=True, nproc=2, pythonpath=str(TESTS))
    assert code != 0, output
    assert "REPRODUCED on rank 0 in compare: AssertionError" in output
    assert "model.0." in output


_LOOP_BASE = Case(
    model=Model(4, Sequential([Linear(5), Linear(3)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=Adam(),
    steps=2,
)
_LOOP_CASES = {
    "save-held": attrs.evolve(_LOOP_BASE, loop=Loop(save_held=True)),
    "resumed-held": attrs.evolve(
        _LOOP_BASE, load=Side(DDP(), (1,)), loop=Loop(resumes=2, load_held=False, save_held=True)
    ),
    "lenient": attrs.evolve(_LOOP_BASE, load=Side(DDP(), (2,)), loop=Loop(lenient=True)),
    "gradless-empty-group": attrs.evolve(
        _LOOP_BASE,
        flatten_optimizer_state_dict=False,
        checks=("continuation",),
        loop=Loop(gradless="first-step", empty_group=True),
    ),
    "hf-consolidated": attrs.evolve(_LOOP_BASE, load=Side(DDP(), (2,)), storage=HfSafetensors(consolidated=True)),
    # groups without global rank 0: the script counts its ranks from RANKS_FROM, as the pool does
    "ranks-from": attrs.evolve(_LOOP_BASE, load=Side(DDP(), (1,)), loop=Loop(ranks_from=1, resumes=2)),
    "late-group": attrs.evolve(_LOOP_BASE, checks=("continuation",), loop=Loop(late_group=True, resumes=2)),
    # expert parallelism: the script splits the grouped experts as the ranks do (sharding.tensor_parallel)
    "expert-parallel": attrs.evolve(
        _LOOP_BASE,
        model=Model(4, Sequential([Linear(5), Experts(3, 2)])),
        save=Side(TP(plan=(("1", "experts"),), fsdp=True), (1, 2)),
    ),
    # pipeline stages: the script cuts and schedules them as the ranks do (sharding.pipeline_stage, steps.pipeline_step)
    "pipeline": attrs.evolve(_LOOP_BASE, save=Side(PP(), (2, 1)), checks=("continuation",)),
    # tensor parallelism inside the stages: (pp, tp), each stage splitting its own planned Linears
    "pipeline-tp": attrs.evolve(
        _LOOP_BASE, save=Side(PP(plan=(("0", "colwise"), ("1", "rowwise"))), (2, 2)), checks=("continuation",)
    ),
    # a second save in flight beside the first: the script gives each its own group, as the ranks do
    "second-save": attrs.evolve(
        _LOOP_BASE, storage=Dcp(api="async"), checks=("continuation",), loop=Loop(second_save=True)
    ),
}


@pytest.mark.parametrize(
    "name",
    # pipeline-tp: 10 s, the slowest; its steps are the pipeline's and TP's, which other export tests run
    [pytest.param(n, marks=pytest.mark.slow) if n == "pipeline-tp" else n for n in sorted(_LOOP_CASES)],
)
def test_a_passing_loop_case_does_not_reproduce(tmp_path, name):
    # The training-loop patterns (a held state dict, a second round-trip, a lenient load) run in the script as on the
    # ranks: a passing case passes there too.
    script = tmp_path / "repro.py"
    script.write_text(export_script(entry_for(_LOOP_CASES[name], RECORDED)))
    code, output = _run(script, nproc=2)
    assert code == 0 and "did not reproduce" in output, output[-3000:]
