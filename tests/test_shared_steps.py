"""One implementation of the rank side: exported scripts are assembled from the modules the pool runs.

``layers``, ``sharding``, ``rank_steps`` and ``bits`` hold the torch steps; ``repro_script`` the
order of the steps and the judge, ``launcher`` the launcher. These tests hold the rules that
make copying them into a standalone script work, and show that a change to a
shared step changes what the pool does and what an exported script does alike.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardfuzz.case import FSDP1, FSDP2, SGD, Adam, BatchNorm, Block, Case, Conv, Linear, Model, Sequential, Side, Tied
from shardfuzz.findings.corpus import entry_for
from shardfuzz.findings.export import export_script
from shardfuzz.rank.portable import bits, handoff, launcher, layers, optimizers, sharding, zero
from shardfuzz.rank.portable import script as repro_script
from shardfuzz.rank.portable import steps as rank_steps
from shardfuzz.rank.portable.checkpoint_files import STORAGE_SOURCES
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import Mismatch, Verdict

TESTS = Path(__file__).resolve().parent
#: In the order export copies them: each after the shared modules it imports.
SHARED = (layers, sharding, zero, optimizers, rank_steps, bits, handoff)
#: What an exported script imports at its top; a shared module may import no more there, besides the
#: shared modules copied before it (their definitions are in the script).
SCRIPT_IMPORTS = {"__future__", "functools", "os", "torch", "torch.distributed", "torch.nn"}
RECORDED = Verdict("mismatch", (Mismatch("complete-state", "optim.state.0.weight.exp_avg", 0, "missing after load"),))


def _case(**changes) -> Case:
    fields = dict(
        model=Model(3, Block([Linear(4), BatchNorm(), Sequential([Conv(dims=2, kernel_size=3), Tied(), Linear(2)])])),
        save=Side(FSDP1(wrap_policy="module-type", module_types=("Conv2d", "Linear")), (2,)),
        load=Side(FSDP2(shard_dim=1), (2,), wrap=("b",)),
        optimizer=Adam(),
        steps=1,
        checks=("continuation", "api-parity"),
    )
    return Case(**{**fields, **changes})


def _script(case: Case, target: str = DEFAULT_TARGET) -> str:
    return export_script(entry_for(case, RECORDED, target=target))


@pytest.mark.parametrize("module", SHARED, ids=lambda m: m.__name__)
def test_a_shared_module_imports_at_its_top_only_what_a_script_imports(module):
    tree = ast.parse(inspect.getsource(module))
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    copied_before = {m.__name__ for m in SHARED[: SHARED.index(module)]}
    assert imported <= SCRIPT_IMPORTS | copied_before, imported - SCRIPT_IMPORTS - copied_before


def test_a_script_holds_each_shared_definition_once_and_as_it_is():
    script = _script(_case())
    copied = [(m, name) for m in SHARED for name in m.__all__] + [(repro_script, n) for n in repro_script.RUN]
    copied += [(launcher, name) for name in launcher.__all__]
    for module, name in copied:
        source = inspect.getsource(getattr(module, name)).rstrip("\n")
        assert script.count(source) == 1, f"{module.__name__}.{name} is not in the script as it is"
    firsts = [script.index(inspect.getsource(getattr(m, m.__all__[0])).rstrip("\n")) for m in SHARED]
    assert firsts == sorted(firsts), "the shared modules are not copied in SHARED's order"
    defined = re.findall(r"^(?:def|class) (\w+)", script, flags=re.MULTILINE)
    assert len(defined) == len(set(defined)), sorted(n for n in defined if defined.count(n) > 1)
    written = {name for name in defined if name not in {n for _, n in copied}}
    assert written <= set(repro_script.CASE_FUNCTIONS) | set(STORAGE_SOURCES), written


def test_a_script_sets_exactly_the_constants_the_run_reads():
    script = _script(_case())
    assigned = re.findall(r"^([A-Z_]+) = ", script, flags=re.MULTILINE)
    assert sorted(set(assigned) - {"PHASE"}) == sorted(repro_script.CASE_CONSTANTS)


def _global_names(code) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


@pytest.mark.parametrize("target", [DEFAULT_TARGET, "faults:PerturbOneLoadedElement"])
def test_every_name_a_script_uses_is_defined_in_it(target):
    namespace: dict = {"__name__": "not_main"}
    exec(compile(_script(_case(), target=target), "repro.py", "exec"), namespace)
    used = _global_names(compile(_script(_case(), target=target), "repro.py", "exec"))
    missing = {n for n in used if n not in namespace and not hasattr(builtins, n)}
    assert not missing, missing


def test_a_fault_in_a_shared_step_shows_in_the_pool_and_in_the_exported_script(tmp_path, monkeypatch):
    """The same faulty ``set_side_state`` (it forgets the optimizer) swapped into ``rank_steps``: the pool's
    round-trip reports the lost optimizer state, and so does a script exported while it is in place."""
    case = Case(
        model=Model(2, Sequential([Linear(3)])),
        save=Side(FSDP2(), (1,)),
        load=Side(FSDP2(), (1,)),
        optimizer=SGD(momentum=0.9),
        steps=1,
    )
    import faults

    monkeypatch.setattr(rank_steps, "set_side_state", faults.set_side_state)
    script = tmp_path / "repro.py"
    script.write_text(_script(case))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1 and "REPRODUCED on rank 0 in compare: AssertionError: complete-state" in proc.stderr
    assert "first: optim." in proc.stderr, proc.stderr[-2000:]  # the optimizer's state was never set

    pool_side = tmp_path / "pool_side.py"
    pool_side.write_text(_POOL_SIDE)
    env["PYTHONPATH"] = str(TESTS)
    from shardfuzz.case import dumps

    proc = subprocess.run(
        [sys.executable, str(pool_side), dumps(case), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys = proc.stdout.split()
    assert keys and all(k.startswith("optim.") for k in keys), keys
    assert any(k.startswith("optim.param_groups.") for k in keys), keys


#: One rank of the pool's round-trip in a process of its own, with ``rank_steps.set_side_state`` faulty.
_POOL_SIDE = """
import sys, torch.distributed as dist
import faults
from shardfuzz.rank.portable import steps as rank_steps
rank_steps.set_side_state = faults.set_side_state
from shardfuzz.case import loads
from shardfuzz.rank.roundtrip import RankContext, run_case
from shardfuzz.targets import DcpTarget
dist.init_process_group("gloo", init_method=f"file://{sys.argv[2]}/store", rank=0, world_size=1)
ctx = RankContext(0, 1)
ctx.create_groups()
mismatches = run_case(loads(sys.argv[1]), ctx, DcpTarget(), f"{sys.argv[2]}/ckpt")
print(" ".join(sorted({m.key for m in mismatches if m.oracle == "complete-state"})))
dist.destroy_process_group()
"""
