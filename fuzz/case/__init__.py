"""The Case: one round-trip scenario as plain, JSON-serialisable data.

A Case says *what* to build, save and load; it never says how. The strategies
draw Cases, the ranks run them, the corpus stores them. This module imports
nothing from torch, so it is cheap to load anywhere.

Variant fields (a module-tree node, an engine, an optimizer) are tagged unions:
each variant is its own frozen class and its JSON form carries a ``"kind"`` tag.
Adding a variant means adding a class here and to the matching ``Union``.

One module per concept: ``leaf_kinds`` (the leaf layers), ``tree`` (the containers and the model), ``sides`` (engines and sides), ``storage``,
``optimizers``, ``training`` (state beyond the model and optimizer), ``loop`` (how a training loop calls the checkpoint APIs), ``scenario`` (the Case and its dimensions), ``serial`` (JSON). The names below are
the public surface; import them from here.
"""

from __future__ import annotations

from shardfuzz.case.leaf_kinds import (
    LEAF_CLASSES,
    Attention,
    BatchNorm,
    Conv,
    Embedding,
    LayerCall,
    LayerNorm,
    Leaf,
    Linear,
    MultiheadAttention,
    RMSNorm,
    Scale,
    SwiGLU,
    Tied,
    TransformerBlock,
    coverage_dimensions,
    coverage_values,
)
from shardfuzz.case.loop import GRADLESS, PLAIN_LOOP, RESUMES, Loop
from shardfuzz.case.optimizers import (
    LOW_BIT_WIDTH,
    LOW_BIT_WIDTHS,
    OPTIMIZER_CLASSES,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    LowBitAdamW,
    RMSprop,
    optimizer_groups,
)
from shardfuzz.case.scenario import (
    CHECKS,
    LOAD_MUTATIONS,
    SCHEMA_VERSION,
    Case,
    dimensions,
    leaves_a_rank_empty,
    map_first_linear,
    shard_count,
)
from shardfuzz.case.serial import describe_structure_error, dumps, from_dict, loads, make_converter, to_dict
from shardfuzz.case.sides import (
    ACTIVATION_CHECKPOINTING,
    DDP,
    DEVICES,
    FSDP1,
    FSDP1_STRATEGIES,
    FSDP2,
    HYBRID_STRATEGIES,
    LOWERS_PARAMETERS,
    MIXED_PRECISION,
    STATE_DICT_APIS,
    STATE_DICT_TYPES,
    TP,
    TP_STYLES,
    WRAP_POLICIES,
    Side,
    Unsharded,
)
from shardfuzz.case.storage import DCP_APIS, STORAGE_CLASSES, Dcp, DcpToTorchSave, HfSafetensors, TorchSave
from shardfuzz.case.training import SCHEDULERS, TrainingState
from shardfuzz.case.tree import (
    DTYPES,
    MODULE_TYPE_CLASSES,
    MODULE_TYPES,
    Block,
    Model,
    Sequential,
    child_items,
    has_trainable_linear,
    leaves,
)
from shardfuzz.case.user_model import UserModel

__all__ = [
    "TP",
    "TP_STYLES",
    "LOWERS_PARAMETERS",
    "MIXED_PRECISION",
    "ACTIVATION_CHECKPOINTING",
    "SCHEDULERS",
    "Loop",
    "PLAIN_LOOP",
    "RESUMES",
    "GRADLESS",
    "TrainingState",
    "UserModel",
    "leaves_a_rank_empty",
    "SCHEMA_VERSION",
    "CHECKS",
    "LOAD_MUTATIONS",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "OPTIMIZER_CLASSES",
    "LOW_BIT_WIDTHS",
    "LOW_BIT_WIDTH",
    "LowBitAdamW",
    "optimizer_groups",
    "Block",
    "Case",
    "DDP",
    "DEVICES",
    "FSDP1",
    "FSDP1_STRATEGIES",
    "FSDP2",
    "MODULE_TYPES",
    "Unsharded",
    "WRAP_POLICIES",
    "Linear",
    "LayerNorm",
    "BatchNorm",
    "Conv",
    "Embedding",
    "Scale",
    "Tied",
    "RMSNorm",
    "SwiGLU",
    "Attention",
    "MultiheadAttention",
    "TransformerBlock",
    "DTYPES",
    "Leaf",
    "LayerCall",
    "LEAF_CLASSES",
    "MODULE_TYPE_CLASSES",
    "coverage_dimensions",
    "coverage_values",
    "leaves",
    "has_trainable_linear",
    "map_first_linear",
    "Model",
    "SGD",
    "Sequential",
    "Side",
    "Dcp",
    "TorchSave",
    "DcpToTorchSave",
    "HfSafetensors",
    "STORAGE_CLASSES",
    "DCP_APIS",
    "describe_structure_error",
    "dimensions",
    "shard_count",
    "dumps",
    "from_dict",
    "loads",
    "to_dict",
    "HYBRID_STRATEGIES",
    "STATE_DICT_APIS",
    "STATE_DICT_TYPES",
    "child_items",
    "make_converter",
]
