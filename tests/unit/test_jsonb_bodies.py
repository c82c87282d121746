"""Free-form JSON in request bodies: what a JSON parser accepts but `jsonb` cannot store is
refused at the edge by the body models, with a reason (found by the API fuzzers)."""

from __future__ import annotations

import pydantic
import pytest

from trace_platform.api.models import TaskCreate
from trace_platform.chain.pool import Health
from trace_platform.dispatcher.models import CompleteRequest, EndpointReport
from trace_platform.domain.endpoints import parse_endpoints
from trace_platform.domain.jsonb import storable

UNSTORABLE = [
    ({"n": -15358804294632718336}, "64 bits"),  # beyond int64: orjson cannot encode it
    ({"k\ud800": 1}, "surrogates"),  # an unpaired surrogate in a key
    ({"k": ["x\udfff"]}, "surrogates"),
    ({"k": {"\x00": None}}, "NUL"),
    ({"k": "a\x00b"}, "NUL"),
]


@pytest.mark.parametrize(("value", "reason"), UNSTORABLE)
def test_unstorable_json_is_named(value: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        storable(value)


@pytest.mark.parametrize(("value", "reason"), UNSTORABLE)
def test_task_payloads_and_outputs_refuse_it(value: dict[str, object], reason: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=reason):
        TaskCreate.model_validate({"payload": value})
    fence = {"task_id": "3f0e4a4e-8d36-4a55-9d38-2b3b2f4f9a11", "attempt": 1}
    fence["lease_token"] = "8f6f2bd2-22b4-43b5-a0a6-5f0b6a0d43e7"
    with pytest.raises(pydantic.ValidationError, match=reason):
        CompleteRequest.model_validate({**fence, "outcome": "success", "outputs": value})
    with pytest.raises(pydantic.ValidationError, match=reason):
        CompleteRequest.model_validate({**fence, "outcome": "success", "events": [value]})


def test_storable_json_passes_unchanged() -> None:
    value = {"n": 2**63 - 1, "s": "åß∂ 😀", "l": [None, True, 1.5]}
    assert TaskCreate.model_validate({"payload": value}).payload == value


def _report(**view: object) -> dict[str, object]:
    h = Health(parse_endpoints("main", "http://127.0.0.1:1")[0])
    return {
        "process": "host:1",
        "endpoints": [{"pool": "main", "endpoint": h.label, "view": {**h.view(), **view}}],
    }


def test_an_endpoint_report_is_a_typed_view() -> None:
    assert EndpointReport.model_validate(_report()).endpoints[0].view.state == "healthy"
    for bad in (
        {"state": "melting"},
        {"requests": -1},
        {"last_error": "x\x00"},
        {"reason": "x\ud800"},
        {"extra_field": 1},
        {"rps": float("inf")},
    ):
        with pytest.raises(pydantic.ValidationError):
            EndpointReport.model_validate(_report(**bad))
    with pytest.raises(pydantic.ValidationError):
        EndpointReport.model_validate({**_report(), "process": "p\x00"})
