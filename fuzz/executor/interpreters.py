"""Other Pythons, with other torches, whose ranks run one side of a case.

A cross-version campaign saves on ranks started by one Python and loads on ranks
started by another. Both import the very ``shardfuzz`` the campaign runs, never a copy
installed there: the ranks get a folder on their path whose ``shardfuzz`` is a link to
this package, so the other environment needs only torch and the rank side's own
dependencies (``RANK_REQUIREMENTS``; ``shardfuzz torch-env`` makes one). Hypothesis,
the strategies and the campaign stay in the main process.

``probe`` asks a Python what it has (its torch, its ``sys.path``, its capabilities) in a
subprocess; ``spawning_in`` makes ``multiprocessing`` start the next processes with it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import attrs

from shardfuzz.capabilities import Capabilities

__all__ = ["RANK_REQUIREMENTS", "Interpreter", "InterpreterError", "probe", "rank_path", "spawning_in"]

#: What a rank imports besides the standard library and shardfuzz itself (pyproject's rank-side dependencies).
RANK_REQUIREMENTS = ("numpy", "attrs>=23.1", "cattrs>=23.2", "packaging>=22")


class InterpreterError(RuntimeError):
    """A Python that cannot run ranks: missing, without torch, or with a torch shardfuzz does not support."""


@attrs.frozen
class Interpreter:
    """A Python ranks can run in: its path, its torch, its own ``sys.path`` and what its torch offers."""

    python: str
    torch_version: str
    python_version: str
    prefix: str  # its sys.prefix: a virtual environment's folder (venvs share one binary through links)
    sys_path: tuple[str, ...]
    capabilities: Capabilities = attrs.field(eq=False)

    @property
    def is_this_one(self) -> bool:
        """Whether it is the Python environment running this process (its ranks need no special start)."""
        return os.path.realpath(self.prefix) == os.path.realpath(sys.prefix)

    def describe(self) -> str:
        return f"torch {self.torch_version} (Python {self.python_version}, {self.python})"


_PROBE = """
import json, sys
path = list(sys.path)
sys.path.append(sys.argv[1])
import dataclasses, platform, torch
from shardfuzz.capabilities import capabilities
print(json.dumps({"torch": torch.__version__, "python": platform.python_version(), "sys_path": path,
                  "prefix": sys.prefix,
                  "capabilities": dataclasses.asdict(capabilities())}))
"""


@functools.cache
def probe(python: str) -> Interpreter:
    """What ``python`` offers ranks (cached: once per Python a process). Raises ``InterpreterError``
    with what is wrong and what to do."""
    resolved = shutil.which(python) if os.sep not in python else python
    if not resolved or not os.access(resolved, os.X_OK):
        raise InterpreterError(f"{python}: no such Python (give the path of an environment's bin/python)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its own path, not this one's
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    try:
        proc = subprocess.run(
            [resolved, "-c", _PROBE, rank_path()], capture_output=True, text=True, timeout=300, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InterpreterError(f"{resolved}: could not ask it what it has: {exc}") from None
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f"exit code {proc.returncode}"]
        hint = ""
        if "No module named" in last[0]:
            hint = f"; install torch and {' '.join(RANK_REQUIREMENTS)} there (`shardfuzz torch-env VERSION` makes one)"
        raise InterpreterError(f"{resolved}: cannot run shardfuzz ranks: {last[0]}{hint}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Interpreter(
        python=resolved,
        torch_version=data["torch"],
        python_version=data["python"],
        prefix=data["prefix"],
        sys_path=tuple(data["sys_path"]),
        capabilities=_capabilities_of(data["capabilities"]),
    )


def _capabilities_of(fields: dict[str, Any]) -> Capabilities:
    """``Capabilities`` from its JSON fields (lists back to tuples)."""
    values: dict[str, Any] = {name: tuple(v) if isinstance(v, list) else v for name, v in fields.items()}
    return Capabilities(**values)


@functools.cache
def rank_path() -> str:
    """A folder (removed at exit) holding ``shardfuzz``: a link to this process's package."""
    import shardfuzz

    folder = tempfile.mkdtemp(prefix="shardfuzz-rank-path-")
    os.symlink(os.path.dirname(os.path.abspath(shardfuzz.__file__)), os.path.join(folder, "shardfuzz"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextlib.contextmanager
def spawning_in(interpreter: Interpreter | None):
    """Processes started by a ``spawn`` context inside run in ``interpreter`` (None, or this Python: as usual).

    ``multiprocessing`` starts a child with the parent's ``sys.path`` and re-imports the
    parent's main module there; another Python must keep its own path (its own torch)
    plus ``rank_path()``, and must not import the parent's main (a CLI or pytest it lacks).
    """
    if interpreter is None or interpreter.is_this_one:
        yield
        return
    from multiprocessing import spawn

    original_exe, original_data = spawn.get_executable(), spawn.get_preparation_data

    def preparation_data(name):
        data = original_data(name)
        data["sys_path"] = [*interpreter.sys_path, rank_path()]
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.set_executable(interpreter.python)
    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.set_executable(original_exe)
        spawn.get_preparation_data = original_data
