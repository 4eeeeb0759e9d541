"""``--device cuda``: sides on GPUs, cases across CPU and GPU, and a clean refusal where there is no GPU.

What runs everywhere: the Case field and its JSON, the strategies' bounds (drawn
for a pretend GPU count), the pool and replay answering a CUDA case they cannot
run without starting a rank, and the CLI's refusal naming why. What needs a GPU
(``gpu`` marker) runs CPU<->GPU round-trips on real NCCL ranks, one per GPU, and
is skipped with torch's own reason elsewhere.
"""

import json
import subprocess
import sys

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import InvalidArgument

from shardfuzz import strategies as sf
from shardfuzz.capabilities import capabilities
from shardfuzz.case import FSDP2, SGD, Adam, Case, Linear, Model, Sequential, Side, dimensions, dumps, loads, to_dict
from shardfuzz.executor import RankPool
from shardfuzz.findings.corpus import entry_for, save_entry
from shardfuzz.findings.replay import replay_entries
from shardfuzz.verdict import Mismatch, Verdict

GPUS = capabilities().cuda_devices
NO_GPU = capabilities().off.get("device cuda", "")
needs_gpu = pytest.mark.skipif(not GPUS, reason=f"no GPU: {NO_GPU}")
needs_no_gpu = pytest.mark.skipif(bool(GPUS), reason="this machine has a GPU: the refusal does not apply")

MODEL = Model(3, Sequential([Linear(5), Linear(2, bias=False)]))
ON_GPU = Case(model=MODEL, save=Side(FSDP2(), (1,), device="cuda"), load=Side(FSDP2(), (2,)), optimizer=Adam(), steps=2)


def test_a_cpu_side_writes_no_device_key_so_older_cases_keep_their_json():
    cpu = attrs.evolve(ON_GPU, save=attrs.evolve(ON_GPU.save, device="cpu"))
    assert "device" not in to_dict(cpu)["save"]
    assert to_dict(ON_GPU)["save"]["device"] == "cuda"
    assert loads(dumps(ON_GPU)) == ON_GPU
    assert loads(dumps(cpu)) == cpu


def test_an_unknown_device_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="device"):
        Side(FSDP2(), (1,), device="tpu")


def test_cuda_sides_use_at_most_one_rank_per_gpu_and_cases_cross_devices():
    crossings = set()

    @settings(max_examples=200, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=4, devices=("cpu", "cuda"), gpus=1))
    def draw(case):
        for side in (case.save, case.load):
            if side.device == "cuda":
                assert side.world_size == 1, side
        crossings.add((case.save.device, case.load.device))
        dims = dimensions(case)
        assert dims["save_device"] == case.save.device

    draw()
    assert crossings == {("cpu", "cpu"), ("cpu", "cuda"), ("cuda", "cpu"), ("cuda", "cuda")}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"devices": ()},
        {"devices": ("tpu",)},
        {"devices": ("cpu", "cuda"), "gpus": 0},
        {"devices": ("cuda",), "gpus": -1},
    ],
)
def test_invalid_device_arguments(kwargs):
    with pytest.raises(InvalidArgument):
        sf.cases(**kwargs).example()


def test_offered_values_name_the_devices_drawn():
    assert sf.offered_values(devices=("cpu", "cuda"))["load_device"] == {"cpu", "cuda"}
    assert sf.offered_values()["save_device"] == {"cpu"}


def test_a_cpu_pool_answers_a_cuda_case_unsupported_without_starting_a_rank():
    pool = RankPool(2)
    verdict = pool.run(ON_GPU)
    assert verdict.status == "unsupported"
    assert "cuda" in verdict.detail and "--device cuda" in verdict.detail
    assert pool.starts == 0


def test_replay_skips_a_cuda_entry_it_cannot_run_and_says_why(tmp_path):
    failing = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))
    path = save_entry(tmp_path, entry_for(ON_GPU, failing))
    from shardfuzz.findings.corpus import load_entry

    pool = RankPool(2)
    (replay,) = replay_entries([(path, load_entry(path))], lambda target, n: pool)
    assert replay.outcome == "skipped" and "cuda" in replay.skipped
    assert replay.verdicts == () and pool.starts == 0
    assert json.loads(json.dumps(replay.as_dict()))["skipped"] == replay.skipped


def _shardfuzz(*argv, cwd):
    return subprocess.run(
        [sys.executable, "-m", "shardfuzz", *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@needs_no_gpu
@pytest.mark.parametrize("command", [["run", "--budget", "5"], ["replay"]])
def test_device_cuda_without_a_gpu_exits_2_saying_why(tmp_path, command):
    proc = _shardfuzz(*command, "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--device cuda: no GPU to run on" in proc.stderr
    assert NO_GPU in proc.stderr  # torch's own answer, e.g. "torch.cuda.is_available() is False (...)"
    assert not (tmp_path / "corpus").exists()


def test_export_refuses_a_cuda_entry_naming_the_side(tmp_path):
    path = save_entry(
        tmp_path,
        entry_for(ON_GPU, Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))),
    )
    proc = _shardfuzz("export", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "save side runs on cuda" in proc.stderr and path.name in proc.stderr


# --- on a GPU -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.ranks
@needs_gpu
@pytest.mark.parametrize("save_device, load_device", [("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "cuda")])
@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1", "ddp"])
def test_round_trips_across_devices_pass_on_nccl_ranks(save_device, load_device, engine):
    from shardfuzz.case import DDP, FSDP1

    make = {"fsdp2": FSDP2, "fsdp1": FSDP1, "ddp": DDP}[engine]
    case = Case(
        model=MODEL,
        save=Side(make(), (1,), device=save_device),
        load=Side(make(), (1,), device=load_device),
        optimizer=Adam(),
        steps=2,
        checks=("continuation",),
    )
    with RankPool(1, device="cuda") as pool:
        verdict = pool.run(case)
    assert verdict.ok, verdict.summary()


@pytest.mark.gpu
@pytest.mark.ranks
@needs_gpu
@pytest.mark.parametrize("save_device, load_device", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_fault_in_a_load_across_devices_is_caught(save_device, load_device):
    """The oracles see a GPU side's state: one loaded element off by one is a mismatch either way."""
    case = Case(
        model=MODEL,
        save=Side(FSDP2(), (1,), device=save_device),
        load=Side(FSDP2(), (1,), device=load_device),
        optimizer=SGD(),
        steps=1,
    )
    with RankPool(1, device="cuda", target="shardfuzz.targets.mutants:PerturbOneLoadedElement") as pool:
        verdict = pool.run(case)
    assert verdict.status == "mismatch", verdict.summary()


@pytest.mark.gpu
@needs_gpu
def test_a_short_cuda_campaign_runs_and_crosses_devices(tmp_path):
    report = tmp_path / "r.json"
    proc = _shardfuzz(
        "run",
        "--device",
        "cuda",
        "--budget",
        "30",
        "--world-size",
        "1",  # one GPU is the common case; a wider pool's other ranks would be gloo ranks on CPU
        "--database",
        "none",
        "--report",
        str(report),
        "--plain",
        "--exit-zero",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    coverage = json.loads(report.read_text())["coverage"]
    assert coverage["save_device"].get("cuda") and coverage["load_device"].get("cpu")


# --- the corpus on a GPU: replay --on-cuda --record --------------------------------------


class _SidesOnCudaPass:
    """An executor where the recorded failure happens on CPU sides only (a CPU-only bug)."""

    def __init__(self, failing: Verdict):
        self.failing = failing
        self.ran: list[Case] = []

    def cannot_run(self, case):
        return ""

    def run(self, case):
        self.ran.append(case)
        return Verdict("pass") if "cuda" in (case.save.device, case.load.device) else self.failing


def _cpu_entry(tmp_path, save_ranks=1, load_ranks=2):
    from shardfuzz.findings.corpus import load_entry

    case = attrs.evolve(ON_GPU, save=Side(FSDP2(), (save_ranks,)), load=Side(FSDP2(), (load_ranks,)))
    failing = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))
    path = save_entry(tmp_path, entry_for(case, failing))
    return path, load_entry(path), failing


def test_moved_to_cuda_moves_each_side_that_has_a_gpu_per_rank():
    from shardfuzz.findings.replay import moved_to_cuda

    case = attrs.evolve(ON_GPU, save=Side(FSDP2(), (1,)), load=Side(FSDP2(), (2,)))
    moved, sides = moved_to_cuda(case, 1)
    assert sides == ("save",) and (moved.save.device, moved.load.device) == ("cuda", "cpu")
    assert moved_to_cuda(case, 2)[1] == ("save", "load")
    assert moved_to_cuda(attrs.evolve(case, save=Side(FSDP2(), (2,))), 1) == (
        attrs.evolve(case, save=Side(FSDP2(), (2,))),
        (),
    )


def test_replay_on_cuda_tells_a_cpu_only_bug_from_one_cuda_has_too(tmp_path):
    path, entry, failing = _cpu_entry(tmp_path)
    pool = _SidesOnCudaPass(failing)
    (replay,) = replay_entries([(path, entry)], lambda target, n: pool, on_cuda=1)
    check = replay.cuda
    assert (check.outcome, check.on_cpu, check.moved) == ("passes", "reproduces", ("save",))
    assert check.verdict.startswith("CPU only")
    assert [c.save.device for c in pool.ran] == ["cuda", "cpu"]  # moved first, then the CPU control

    pool.run = lambda case: failing  # fails on either device: CUDA too
    (replay,) = replay_entries([(path, entry)], lambda target, n: pool, on_cuda=1)
    assert replay.cuda.outcome == "reproduces" and replay.cuda.verdict.startswith("CUDA too")


def test_replay_on_cuda_records_why_an_entry_could_not_move(tmp_path):
    path, entry, failing = _cpu_entry(tmp_path, save_ranks=2, load_ranks=2)
    pool = _SidesOnCudaPass(failing)
    (replay,) = replay_entries([(path, entry)], lambda target, n: pool, on_cuda=1)
    assert replay.outcome == "skipped" and pool.ran == []
    assert replay.cuda.outcome == "not run" and "one rank per GPU" in replay.cuda.detail
    assert replay.cuda.verdict.startswith("not checked on CUDA")


def test_an_entry_cuda_block_round_trips_and_is_left_out_until_checked(tmp_path):
    from shardfuzz.findings.corpus import load_entry, rewrite_entry
    from shardfuzz.findings.device_check import DeviceCheck

    path, entry, _ = _cpu_entry(tmp_path)
    assert "cuda" not in json.loads(path.read_text())
    check = DeviceCheck("reproduces", "2.11.0+cu130", "NVIDIA H200 x1", ("save",), on_cpu="reproduces")
    rewrite_entry(path, attrs.evolve(entry, cuda=check))
    assert load_entry(path).cuda == check


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--on-cuda"], "give --device cuda"),
        (["--record"], "give --on-cuda"),
    ],
)
def test_replay_on_cuda_options_are_checked_up_front(tmp_path, argv, says):
    proc = _shardfuzz("replay", *argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert says in proc.stderr


def test_replay_on_cuda_runs_an_entry_found_on_a_gpu_as_recorded_and_its_cpu_form_as_control(tmp_path):
    from shardfuzz.findings.corpus import load_entry

    failing = Verdict("mismatch", (Mismatch("state-equal", "model.0.weight", 0, "values differ"),))
    path = save_entry(tmp_path, entry_for(ON_GPU, failing, world_size=2))
    pool = _SidesOnCudaPass(failing)
    pool.run = lambda case: (
        pool.ran.append(case) or (failing if "cuda" in (case.save.device, case.load.device) else Verdict("pass"))
    )
    (replay,) = replay_entries([(path, load_entry(path))], lambda target, n: pool, on_cuda=1)
    assert [(c.save.device, c.load.device) for c in pool.ran] == [("cuda", "cpu"), ("cpu", "cpu")]
    assert (replay.cuda.outcome, replay.cuda.on_cpu, replay.cuda.moved) == ("reproduces", "passes", ("save",))
    assert replay.cuda.verdict.startswith("CUDA too")


def test_a_cuda_side_is_named_in_the_case_description():
    from shardfuzz.findings.describe import describe

    assert "FSDP2x1 on cuda" in describe(ON_GPU) and "on cuda" not in describe(ON_GPU).split("load")[1]
