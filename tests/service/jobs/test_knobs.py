"""The /train schema's hyperparameters come from TrainConfig's declarations, bounds included."""

from __future__ import annotations

from dataclasses import Field
from typing import Any

import pytest
from pydantic import ValidationError

from models.train import TrainConfig
from models.train.config import knob_type, knobs
from service.jobs.bounds import TrainBounds
from service.schemas.jobs import HYPERPARAMETERS, TrainRequest


def test_every_request_knob_is_a_schema_field_with_its_lower_bound_in_openapi() -> None:
    props = TrainRequest.model_json_schema()["properties"]
    for f in knobs(request_only=True):
        assert f.name in HYPERPARAMETERS
        field = props[f.name]
        assert field["description"] == f.metadata["help"]
        low = f.metadata["low"]
        if low is None:
            continue
        shown = next(o for o in field["anyOf"] if o.get("type") != "null")
        key = "exclusiveMinimum" if f.metadata["above"] else "minimum"
        assert shown[key] == low, f.name


BOUNDED = [f for f in knobs(request_only=True) if f.metadata["low"] is not None]


@pytest.mark.parametrize("f", BOUNDED, ids=lambda f: f.name)
def test_below_the_lower_bound_is_refused_by_both_the_schema_and_the_config(
    f: Field[Any],
) -> None:
    low = f.metadata["low"]
    bad = low if f.metadata["above"] else (low - 1 if knob_type(f) is int else low - 0.01)
    with pytest.raises(ValidationError):
        TrainRequest(name="m", arch="gru", **{f.name: bad})
    with pytest.raises(ValueError, match=f.name):
        TrainConfig(**{f.name: bad})


def test_bounds_describe_the_schema_lower_bound_and_the_operator_upper_bound() -> None:
    bounds = TrainBounds(max_bptt=64)
    assert bounds.describe("bptt") == ">= 1 and <= 64"
    assert bounds.describe("lr").startswith("> 0")
    assert bounds.check({"bptt": 65}) and not bounds.check({"bptt": 64})
