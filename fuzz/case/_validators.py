"""Validators shared by the Case data model's modules."""

from __future__ import annotations

from attrs.validators import ge, instance_of

_POSITIVE_INT = [instance_of(int), ge(1)]  # attrs names the field in its messages
