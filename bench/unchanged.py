"""Behaviour kept across a refactor: the cases a seed draws and the corpus entries' bytes, as digests.

    python bench/unchanged.py --examples 300 --seed 0 > before.txt   # on the old tree
    python bench/unchanged.py --examples 300 --seed 0 > after.txt    # on the new one; diff them

Prints one line per drawn case (its JSON) and one per corpus entry (whether loading and writing it again
gives the file's bytes), then the digests of both.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _draws import for_each_drawn_case


def _corpus_module():
    try:
        from shardfuzz.findings import corpus
    except ImportError:  # the layout before docs/architecture.md
        from shardfuzz import corpus  # type: ignore[no-redef]
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent.parent / "corpus")
    args = parser.parse_args()

    from shardfuzz.case import dumps
    from shardfuzz.strategies import cases

    drawn: list[str] = []
    for_each_drawn_case(cases(), examples=args.examples, seed=args.seed, run=lambda case: drawn.append(dumps(case)))
    for text in drawn:
        print("case", text)
    corpus = _corpus_module()
    same = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted(args.corpus.glob("*.json")):
            again = corpus.rewrite_entry(Path(scratch) / path.name, corpus.load_entry(path))
            same.append(again.read_bytes() == path.read_bytes())
            print("entry", path.name, "same bytes" if same[-1] else "DIFFERENT BYTES")
    print(f"cases: {len(drawn)} drawn, sha256 {hashlib.sha256(chr(10).join(drawn).encode()).hexdigest()}")
    print(f"corpus: {sum(same)} of {len(same)} entries write back byte for byte")


if __name__ == "__main__":
    main()
