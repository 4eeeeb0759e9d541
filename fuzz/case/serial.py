"""JSON for the Case data model: one converter factory (tagged unions, fields left out at their defaults) and dumps/loads."""

from __future__ import annotations

import json
import sys
from typing import Union

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from shardfuzz.case.leaf_kinds import Linear
from shardfuzz.case.loop import Loop
from shardfuzz.case.optimizers import Optimizer
from shardfuzz.case.scenario import SCHEMA_VERSION, Case
from shardfuzz.case.sides import FSDP1, Engine, Side
from shardfuzz.case.storage import Storage
from shardfuzz.case.tree import Block, Model, Node, Sequential
from shardfuzz.case.user_model import UserModel


def make_converter() -> cattrs.Converter:
    """A converter for the Case data model, set up in one place: variant fields are tagged unions
    (``"kind"``), and fields added after the first corpus entries were written stay out of the JSON
    at their defaults, so those entries (and their file names) do not change. Other JSON (corpus
    entries, reports) starts from one of these and adds its own hooks."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    for cls in (Sequential, Block, FSDP1, Model, UserModel, Side, Case):  # string annotations, each in its own module
        attrs.resolve_types(cls, vars(sys.modules[cls.__module__]))
    converter.register_unstructure_hook(
        Linear, make_dict_unstructure_fn(Linear, converter, frozen=override(omit_if_default=True))
    )
    for union in (Node, Engine, Optimizer, Storage):
        configure_tagged_union(union, converter, tag_name="kind", tag_generator=lambda c: c.__name__)
    # A root is a container only; reuse the tag names of the node union.
    configure_tagged_union(Union[Sequential, Block], converter, tag_name="kind", tag_generator=lambda c: c.__name__)
    # After the unions: the generated hooks below must find the unions' (tagged) ones.
    omitted = override(omit_if_default=True)
    converter.register_unstructure_hook(
        Side,
        make_dict_unstructure_fn(
            Side,
            converter,
            device=omitted,
            cpu_offload=omitted,
            broadcast_from_rank0=omitted,
            state_dict_api=omitted,
            activation_checkpointing=omitted,
            checkpointed=omitted,
            compiled=omitted,
            meta_init=omitted,
            mixed_precision=omitted,
            offload_params=omitted,
            batchnorm_fp32=omitted,
        ),
    )
    converter.register_unstructure_hook(Model, make_dict_unstructure_fn(Model, converter, dtype=omitted))
    converter.register_unstructure_hook(
        Loop,
        make_dict_unstructure_fn(
            Loop,
            converter,
            save_held=omitted,
            load_held=omitted,
            resumes=omitted,
            lenient=omitted,
            gradless=omitted,
            empty_group=omitted,
            second_save=omitted,
            ranks_from=omitted,
            late_group=omitted,
        ),
    )
    # A Case's model is a drawn tree or the user's own (``--model``), told apart by the user's ``factory``
    # key, so that the JSON of every tree model stays as it was (no tag).
    tree_model = converter.get_structure_hook(Model)
    user_model = converter.get_structure_hook(UserModel)
    converter.register_unstructure_hook(Union[Model, UserModel], lambda model: converter.unstructure(model))
    converter.register_structure_hook(
        Union[Model, UserModel],
        lambda data, _: user_model(data, UserModel) if "factory" in data else tree_model(data, Model),
    )
    # Last: Case's generated hook takes the Side and Model hooks registered above.
    converter.register_unstructure_hook(
        Case,
        make_dict_unstructure_fn(
            Case, converter, storage=omitted, ignore_frozen_params=omitted, training=omitted, loop=omitted
        ),
    )
    return converter


converter = make_converter()


def to_dict(case: Case) -> dict:
    return converter.unstructure(case)


def from_dict(data: dict) -> Case:
    """Build a Case from its JSON form; raises ``ValueError`` naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a case is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"case schema_version {version!r} is not {SCHEMA_VERSION} (written by another shardfuzz?)")
    try:
        return converter.structure(data, Case)
    except Exception as exc:  # cattrs raises ExceptionGroups with nested detail
        raise ValueError(describe_structure_error(exc, "case")) from exc


def dumps(case: Case) -> str:
    return json.dumps(to_dict(case), sort_keys=True, separators=(",", ":"))


def loads(text: str) -> Case:
    return from_dict(json.loads(text))


def describe_structure_error(exc: BaseException, path: str) -> str:
    """cattrs' path-annotated lines, each with the validator's own words, as one line."""
    try:
        lines = cattrs.transform_error(exc, path=path, format_exception=_format_leaf)
    except Exception:
        lines = [f"{type(exc).__name__}: {exc}"]
    return "; ".join(lines)


def _format_leaf(exc: BaseException, type_) -> str:
    if isinstance(exc, KeyError):
        return f"missing field or unknown kind {exc}"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return f"invalid value ({exc})"
    return cattrs.v.format_exception(exc, type_)
