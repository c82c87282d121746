"""`Accept` negotiation of a query's answer format (`domain.query_formats`, RFC 9110
§12.5.1): q-values weigh the four offered types, the most specific range decides a type's
weight, ties go to the client's order, q=0 refuses, and nothing acceptable is a 406 naming
what is offered; a `format` field wins over any header."""

from __future__ import annotations

import pytest

from trace_platform.domain.errors import ValidationError
from trace_platform.domain.query_formats import (
    MEDIA_TYPES,
    NotAcceptable,
    choose_format,
    negotiate,
    parse_accept,
)

ARROW, PARQUET = MEDIA_TYPES["arrow"], MEDIA_TYPES["parquet"]


def test_no_header_an_empty_one_or_any_type_is_json() -> None:
    for accept in (None, "", "  ", "*/*", "application/*", "*/*;q=0.1"):
        assert negotiate(accept) == "json", accept


def test_the_highest_weight_wins_whatever_the_order() -> None:
    assert negotiate(f"text/csv;q=0.5, {ARROW};q=0.8, {PARQUET};q=0.2") == "arrow"
    assert negotiate(f"{PARQUET};q=0.2, application/json;q=0.3") == "json"
    assert negotiate("application/json;q=0.001, text/csv;q=0.002") == "csv"


def test_equal_weights_go_to_the_type_the_client_named_first() -> None:
    assert negotiate(f"text/csv, {PARQUET}") == "csv"
    assert negotiate(f"{PARQUET}, text/csv") == "parquet"
    assert negotiate(f"{ARROW};q=0.5, text/csv;q=0.5") == "arrow"


def test_a_wildcard_weighs_what_no_more_specific_range_names() -> None:
    # csv at 0.9 by its own range; the others at 1 by */*: JSON, first in the server's order
    assert negotiate("text/csv;q=0.9, */*") == "json"
    assert negotiate("text/csv, */*;q=0.5") == "csv"
    assert negotiate("text/*") == "csv"
    # application/* covers JSON, Arrow and Parquet: JSON first, unless refused by name
    assert negotiate("application/*") == "json"
    assert negotiate("application/json;q=0, application/*") == "arrow"
    assert negotiate(f"application/json;q=0, {ARROW};q=0, application/*") == "parquet"
    # the most specific range decides even when a wildcard weighs more
    assert negotiate("*/*;q=1, application/json;q=0.1, text/*;q=0.2") == "arrow"


def test_q_zero_refuses_a_type_and_nothing_acceptable_is_406() -> None:
    assert negotiate("*/*;q=0, text/csv") == "csv"
    assert negotiate("application/json;q=0, text/csv;q=0.1") == "csv"
    for accept in ("application/xml", "application/json;q=0", "*/*;q=0", "image/*", "text/html"):
        with pytest.raises(NotAcceptable) as caught:
            negotiate(accept)
        assert caught.value.status == 406 and "\n" not in caught.value.detail
        for media in MEDIA_TYPES.values():
            assert media in caught.value.detail


def test_parameters_case_and_spacing_are_read_as_the_rfc_says() -> None:
    assert negotiate("TEXT/CSV ; Q=0.7 , Application/JSON ; q=0.6") == "csv"
    assert negotiate('text/csv;header="present, quoted";q=0.9, application/json;q=0.8') == "csv"
    # a media-type parameter makes a range more specific than the bare type
    assert negotiate("text/csv;q=0.1, text/csv;charset=utf-8;q=0.9, */*;q=0.5") == "csv"
    # extension parameters after q do not change the weight
    assert negotiate("text/csv;q=0.4;ext=1, application/json;q=0.3") == "csv"


def test_members_that_are_not_media_ranges_or_have_bad_weights_are_left_out() -> None:
    ranges = parse_accept('text/csv;q=2, json, */csv, , application/json;q=0.1234, text/*;q=".5"')
    assert ranges == []
    for accept in ("text/csv;q=2, application/json;q=0.1", "text/csv;q=1.5, application/json"):
        assert negotiate(accept) == "json"
    with pytest.raises(NotAcceptable):
        negotiate("text/csv;q=abc")
    (only,) = parse_accept("text/csv;charset=utf-8;q=0.500;x=y")
    assert (only.type, only.subtype, only.has_params, only.q) == ("text", "csv", True, 0.5)


def test_a_format_field_wins_over_any_accept_and_must_be_known() -> None:
    assert choose_format("parquet", f"{ARROW}, */*;q=0") == "parquet"
    assert choose_format("json", "text/csv") == "json"
    assert choose_format(None, "text/csv;q=0.9, */*;q=0.1") == "csv"
    with pytest.raises(ValidationError, match="format must be one of"):
        choose_format("xml", "*/*")
