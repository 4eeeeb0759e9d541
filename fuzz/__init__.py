"""shardfuzz: property-based fuzzing of sharded-checkpoint round-trips in PyTorch.

The code that draws a case (``shardfuzz.strategies``) never runs it; the code
that runs it (``shardfuzz.executor`` and the rank-side modules) never draws.

The public surface is ``__all__`` here and in ``shardfuzz.strategies``. Names that
pull in Hypothesis or the pool are imported on first use, so ``import shardfuzz``
stays cheap (a rank process imports it too).
"""

from __future__ import annotations

import importlib
from typing import Any

from shardfuzz.case import Case, dumps, loads, user_model
from shardfuzz.rank.model_factory import probe as _probe_user_model

# The data package imports nothing torch-side: the root wires a user model's shape to the probe that builds it
# on the meta device (torch is imported when a factory is first probed, not here).
user_model.use_shape_probe(_probe_user_model)

__all__ = [
    "CampaignHost",
    "CampaignSettings",
    "Case",
    "CheckpointTarget",
    "FunctionHost",
    "ObjectTarget",
    "RankPool",
    "ShardsModules",
    "Verdict",
    "__version__",
    "dumps",
    "known_bugs",
    "load_corpus",
    "loads",
    "run_campaign",
]
__version__ = "0.1.0"

_LAZY = {
    "CampaignHost": "shardfuzz.search.campaign",
    "CampaignSettings": "shardfuzz.search.campaign",
    "FunctionHost": "shardfuzz.search.campaign",
    "CheckpointTarget": "shardfuzz.targets",
    "ObjectTarget": "shardfuzz.targets",
    "ShardsModules": "shardfuzz.targets",
    "RankPool": "shardfuzz.executor",
    "Verdict": "shardfuzz.verdict",
    "known_bugs": "shardfuzz.findings.corpus",
    "load_corpus": "shardfuzz.findings.corpus",
    "run_campaign": "shardfuzz.search.campaign",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shardfuzz' has no attribute {name!r}")
