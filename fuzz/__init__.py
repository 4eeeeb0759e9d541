"""shardfuzz: property-based fuzzing of sharded-checkpoint round-trips in PyTorch.

The code that draws a case (``shardfuzz.strategies``) never runs it; the code
that runs it (``shardfuzz.executor`` and the rank-side modules) never draws.
"""

from shardfuzz.case import Case, dumps, loads

__all__ = ["Case", "dumps", "loads", "__version__"]
__version__ = "0.1.0"
