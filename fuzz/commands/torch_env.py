"""``shardfuzz torch-env``: make (or find) an environment with another torch and print its Python."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    """Print the Python of an environment with torch ``args.version`` (made if missing); progress on stderr."""
    from shardfuzz.executor.torch_envs import TorchEnvError, make_env

    try:
        python, found = make_env(args.version, pip_args=args.pip_arg, log=lambda line: print(line, file=sys.stderr))
    except TorchEnvError as exc:
        print(f"shardfuzz torch-env: {exc}", file=sys.stderr)
        return 2
    print(f"shardfuzz torch-env: {found.describe()}", file=sys.stderr)
    for feature, why in sorted(found.capabilities.off.items()):
        print(f"  off  {feature}  ({why})", file=sys.stderr)
    print(python)
    return 0
