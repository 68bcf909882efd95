"""`JsonTyped`: request models whose scalars take only the JSON type their schema names.

Pydantic's lax mode turns `false` into `0.0`, `"5"` into `5` and `"yes"` into
`True`. The OpenAPI document promises `number`, `integer` and `boolean`, and
schemathesis holds the API to it: a request the document calls invalid must be
refused. Strict mode would also refuse enum values given as strings in Python
(the way tests and the workflow build these models), so only the scalars are
checked, before validation, and only where the value is a JSON scalar of another
type. Values recorded in histories were produced by these models, so they pass.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, model_validator

_NUMBER = (int, float)


def _scalar_kind(annotation: Any) -> type | None:
    """`bool`, `int` or `float` when the field is one of them (or it or None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _scalar_kind(kinds[0]) if len(kinds) == 1 else None
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar_kind(args[0])
    return annotation if annotation in (bool, int, float) else None


def _wrong_type(kind: type, value: Any) -> bool:
    if value is None or isinstance(value, (dict, list)):
        return False  # None is judged by the field itself; containers are not scalars
    if kind is bool:
        return not isinstance(value, bool)
    return isinstance(value, bool) or not isinstance(value, _NUMBER)


@functools.cache
def _scalar_fields(model: type[BaseModel]) -> tuple[tuple[str, type], ...]:
    """`(key, scalar type)` of each of `model`'s scalar fields, worked out once per
    model: every payload Temporal decodes into one of these models runs the check."""
    found = []
    for name, field in model.model_fields.items():
        kind = _scalar_kind(field.annotation)
        if kind is not None:
            found.append((field.alias or name, kind))
    return tuple(found)


class JsonTyped(BaseModel):
    """Base of the models clients send: see the module docstring."""

    @model_validator(mode="before")
    @classmethod
    def _json_scalar_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, kind in _scalar_fields(cls):
            if key in data and _wrong_type(kind, data[key]):
                expected = {bool: "a boolean", int: "an integer", float: "a number"}[kind]
                raise ValueError(f"{key} must be {expected} (JSON), not {data[key]!r}")
        return data
