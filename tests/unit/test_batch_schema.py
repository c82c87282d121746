"""The alert_events row schema is strict: the first bad line rejects the whole batch."""

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from trace_platform.domain.batch import BatchRejected, BufferPointer, parse_row

GOOD = {
    "alert_definition_id": str(uuid.uuid4()),
    "dedupe_key": "chain1:0xabc:0",
    "event_time": "2024-05-01T12:00:00Z",
    "chain_id": 1,
    "block_number": 19000000,
    "block_hash": "0xblock",
    "tx_hash": "0xtx",
    "payload": {"value": "1"},
}


def line(**over: object) -> bytes:
    row = {**GOOD, **over}
    return orjson.dumps({k: v for k, v in row.items() if v is not ...})


def test_good_row_becomes_a_staging_record() -> None:
    rec = parse_row(line(), 1)
    assert rec[0] == "chain1:0xabc:0" and rec[1] == uuid.UUID(GOOD["alert_definition_id"])  # type: ignore[arg-type]
    assert rec[2] == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert rec[3:7] == (1, 19000000, "0xblock", "0xtx")
    assert orjson.loads(rec[7]) == {"value": "1"}


def test_optional_fields_may_be_absent_or_null() -> None:
    rec = parse_row(
        line(chain_id=None, block_number=..., block_hash=..., tx_hash=..., payload=...), 1
    )
    assert rec[3:7] == (None, None, None, None) and rec[7] == "{}"


def test_trusted_fields_in_rows_are_ignored_not_rejected() -> None:
    rec = parse_row(line(org_id=str(uuid.uuid4()), producer_task_id="x"), 1)
    assert len(rec) == 9  # no org or producer column comes from the row


def test_channels_name_the_deliveries_of_an_event() -> None:
    assert parse_row(line(channels=[0, 2]), 1)[8] == [0, 2]
    assert parse_row(line(channels=[]), 1)[8] is None
    assert parse_row(line(), 1)[8] is None
    for bad in ([0, 0], [8], [-1], ["0"], [True], 0, list(range(9))):
        with pytest.raises(BatchRejected, match="channels must be"):
            parse_row(line(channels=bad), 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        b'"str"',
        line(extra_field=1),
        line(dedupe_key=""),
        line(dedupe_key=5),
        line(dedupe_key=...),
        line(alert_definition_id="nope"),
        line(alert_definition_id=123),
        line(event_time="2024-05-01 12:00:00"),
        line(event_time="2024-05-01T12:00:00"),
        line(event_time=1714564800),
        line(chain_id="1"),
        line(chain_id=True),
        line(chain_id=1.5),
        line(block_number=2**63),
        line(block_hash=123),
        line(payload=[1]),
        line(payload="{}"),
        line(tx_hash="x" * 1000),
        line(payload={"k": "a\x00b"}),
    ],
)
def test_bad_rows_reject_the_batch(raw: bytes) -> None:
    with pytest.raises(BatchRejected) as err:
        parse_row(raw, 7)
    assert err.value.reason.startswith("line 7:")


def test_pointer_message_is_strict() -> None:
    base = {
        "kind": "buffer_batch",
        "org_id": str(uuid.uuid4()),
        "batch_uri": "file:///x/buffers/t/1/b.jsonl",
        "content_type": "application/jsonl",
        "record_count": 3,
        "producer": {"task_id": str(uuid.uuid4()), "attempt": 1},
    }
    assert BufferPointer.model_validate(base).record_count == 3
    for bad in (
        {"kind": "other"},
        {"record_count": -1},
        {"surprise": 1},
        {"producer": {"task_id": "x", "attempt": 1}},
        {"content_type": "text/csv"},
    ):
        with pytest.raises(ValueError):
            BufferPointer.model_validate({**base, **bad})
