"""Environments with another torch, made once from the package registry and reused.

``shardfuzz torch-env 2.4.1`` makes (or finds) a virtual environment with ``torch==2.4.1``
and what a rank imports besides (``interpreters.RANK_REQUIREMENTS``) under the cache
folder, and prints its Python, for ``--save-python`` / ``--load-python``. Nothing of
shardfuzz is installed there: its ranks import the campaign's own (``interpreters``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shardfuzz.executor.interpreters import RANK_REQUIREMENTS, Interpreter, InterpreterError, probe

__all__ = ["TorchEnvError", "envs_root", "make_env", "python_of"]

_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([a-z0-9.+]*)$")


class TorchEnvError(RuntimeError):
    """An environment that could not be made; the message says which step failed and how."""


def envs_root() -> Path:
    """``$SHARDFUZZ_TORCH_ENVS``, else ``$XDG_CACHE_HOME/shardfuzz/torch-envs`` (``~/.cache`` by default)."""
    if os.environ.get("SHARDFUZZ_TORCH_ENVS"):
        return Path(os.environ["SHARDFUZZ_TORCH_ENVS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "shardfuzz" / "torch-envs"


def python_of(version: str) -> Path:
    """Where the environment of torch ``version`` has (or would have) its Python."""
    return envs_root() / version / "bin" / "python"


def make_env(
    version: str, *, pip_args: Sequence[str] = (), log: Callable[[str], None] = print
) -> tuple[Path, Interpreter]:
    """The environment of torch ``version``: reused when its torch is that version, else made
    (``python -m venv`` with this Python, then ``pip install torch==VERSION`` and the rank's
    requirements, with ``pip_args`` added). Returns its Python and what it offers."""
    if not _VERSION.match(version):
        raise TorchEnvError(f"{version!r} is not a torch version (say 2.4.1 or 2.15.0)")
    python = python_of(version)
    if python.exists():
        try:
            found = probe(str(python))
        except InterpreterError as exc:
            log(f"shardfuzz torch-env: {python.parent.parent} is unusable ({exc}); installing again")
        else:
            if _release(found.torch_version) == _release(version):
                return python, found
            log(f"shardfuzz torch-env: {python.parent.parent} has torch {found.torch_version}; installing {version}")
    else:
        log(f"shardfuzz torch-env: making {python.parent.parent}")
        _step([sys.executable, "-m", "venv", str(python.parent.parent)], "make the virtual environment")
    _step(
        [str(python), "-m", "pip", "install", f"torch=={version}", *RANK_REQUIREMENTS, *pip_args],
        f"install torch=={version} (is it on your package index for this Python and platform?)",
    )
    probe.cache_clear()
    try:
        return python, probe(str(python))
    except InterpreterError as exc:
        raise TorchEnvError(f"torch {version} installed, but its ranks cannot start: {exc}") from None


def _release(version: str) -> str:
    """``2.4.1`` of ``2.4.1+cu121``."""
    return version.split("+")[0]


def _step(command: list[str], what: str) -> None:
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise TorchEnvError(f"could not {what}: `{' '.join(command)}` exited with {done.returncode}")
