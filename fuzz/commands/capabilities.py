"""``shardfuzz capabilities``: what the installed torch offers to the fuzzer, feature by feature."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    """Print the torch version, then each feature's state and why (the command takes no options)."""
    from shardfuzz.capabilities import capabilities

    caps = capabilities()
    print(f"torch {caps.torch_version}")
    for feature, state, why in caps.table():
        print(f"  {state:3}  {feature}{'  (' + why + ')' if why else ''}")
    return 0
