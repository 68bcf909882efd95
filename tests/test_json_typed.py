"""`JsonTyped` (agentrun/contracts/_json_typed.py): scalars take only their JSON type,
by field name or alias, on every model (the per-model field list is worked out once)."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from agentrun.contracts import Limits
from agentrun.contracts._json_typed import JsonTyped


class _Flags(JsonTyped):
    on: bool = False
    count: int | None = None
    ratio: float = Field(default=0.5, alias="Ratio")
    name: str = ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"on": 1}, "on must be a boolean"),
        ({"count": "5"}, "count must be an integer"),
        ({"count": True}, "count must be an integer"),
        ({"Ratio": False}, "Ratio must be a number"),
    ],
)
def test_a_scalar_of_another_json_type_is_refused_by_its_key(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _Flags.model_validate(data)


def test_matching_types_and_non_scalars_pass_on_every_model() -> None:
    flags = _Flags.model_validate({"on": True, "count": None, "Ratio": 2, "name": "5"})
    assert (flags.on, flags.count, flags.ratio, flags.name) == (True, None, 2.0, "5")
    # A second model's fields are its own, not the first one's.
    assert Limits.model_validate({"max_steps": 3}).max_steps == 3
    with pytest.raises(ValidationError, match="max_steps must be an integer"):
        Limits.model_validate({"max_steps": "3"})
