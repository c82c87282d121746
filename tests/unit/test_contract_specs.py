"""Pure logic of decoded events and the catalog: event parsing, typed columns, the
`contracts:` section's checks, abi_file inlining, and the catalog's naming scheme."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from eth_abi.abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_platform.chain.abi import AbiError, Decoder, event_abi, event_of_abi, parse_signature
from trace_platform.chain.devnet import pools_artifact
from trace_platform.chain.spec import decoded_streams
from trace_platform.domain.catalog import default_job, relation_aliases
from trace_platform.domain.errors import ValidationError
from trace_platform.domain.sql_gate import SqlRejected, check_relations, check_sql
from trace_platform.specs import inline_abi_files, parse_spec_documents

FACTORY = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def chain_doc(contracts: str, streams: str = "  logs: {cryo_dataset: logs}\n") -> str:
    return (
        "kind: chain_sync\nname: j\nchain_id: 1\nrpc_pool: p\n"
        "mode: {kind: fixed_target, to_block: 10}\nstreams:\n" + streams + contracts
    )


def test_human_readable_and_json_abi_agree_on_signature_topic_and_columns() -> None:
    text = (
        "event Swap(address indexed sender, uint amount0In, uint amount1In,"
        " uint amount0Out, uint amount1Out, address indexed to)"
    )
    parsed = parse_signature(text)
    (entry,) = [e for e in pools_artifact()["pair"]["abi"] if e.get("name") == "Swap"]
    from_json = event_of_abi(entry)
    assert parsed.signature == from_json.signature
    assert parsed.signature == "Swap(address,uint256,uint256,uint256,uint256,address)"
    assert parsed.topic0 == "0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822"
    assert parsed.column_names() == from_json.column_names()
    assert event_of_abi(event_abi(parsed)) == parsed  # what a spec stores reads back the same


@pytest.mark.parametrize(
    "bad",
    [
        "event X(uint7 a)",
        "event X(bytes33 a)",
        "event X(address indexed a, address indexed b, address indexed c, address indexed d)",
        "event X(uint a, uint a)",
        "event X(uint a) anonymous",
        "function f(uint a)",
        "event X((uint a, address indexed b) t)",
    ],
)
def test_bad_events_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(AbiError):
        parse_signature(bad)


def test_decoding_is_lossless_for_wide_integers_and_nested_values() -> None:
    event = parse_signature(
        "event E(address indexed who, uint256 big, int128 neg, (uint256 a, bool b)[] legs,"
        " string indexed memo, bytes data, uint8 small)"
    )
    decoder = Decoder(event)
    body = encode(
        ["uint256", "int128", "(uint256,bool)[]", "bytes", "uint8"],
        [2**256 - 1, -(2**100), [(2**70, True)], b"\x01\x02", 7],
    )
    row = {
        "block_number": 5,
        "transaction_index": 0,
        "log_index": 3,
        "transaction_hash": "0xab",
        "address": "0xcd",
        "topic1": "0x" + "00" * 12 + "11" * 20,
        "topic2": "0x" + "22" * 32,
        "data": "0x" + body.hex(),
    }
    assert decoder.add(row)
    (out,) = decoder.table().to_pylist()
    assert out["who"] == "0x" + "11" * 20
    assert out["big"] is None and out["big_raw"] == str(2**256 - 1)  # over 38 digits
    assert out["neg"] == Decimal(-(2**100)) and out["neg_raw"] == str(-(2**100))
    assert out["legs"] == [{"a": str(2**70), "b": True}]
    assert out["memo"] == "0x" + "22" * 32  # an indexed string: its topic
    assert out["data"] == "0x0102" and out["small"] == 7
    # A log that does not decode as the event (truncated data, a topic too many) is skipped,
    # and counted with the first one's ids (never its data).
    assert decoder.undecodable == 0 and decoder.first_undecodable is None
    assert not decoder.add({**row, "data": "0x" + body.hex()[:40], "log_index": 4})
    assert not decoder.add({**row, "topic3": "0x" + "33" * 32})
    assert len(decoder) == 1
    assert decoder.undecodable == 2
    assert decoder.first_undecodable == {
        "block_number": 5,
        "log_index": 4,
        "transaction_hash": "0xab",
    }


def test_contracts_need_a_logs_stream_and_a_known_factory_parameter() -> None:
    art = pools_artifact()
    ok = (
        "contracts:\n"
        f"  factory: {{address: [{FACTORY}], abi: {json.dumps(art['factory']['abi'])}}}\n"
        "  pair:\n"
        "    factory: {contract: factory, event: PairCreated, parameter: pair}\n"
        "    events: ['event Swap(address indexed sender, uint a, uint b, uint c, uint d, address indexed to)']\n"
    )
    (spec,) = parse_spec_documents(chain_doc(ok))
    tables = decoded_streams(spec)  # type: ignore[arg-type]
    assert set(tables) == {"factory_PairCreated", "pair_Swap"}
    assert tables["factory_PairCreated"]["addresses"] == [FACTORY]  # unquoted 0x… kept exact
    assert tables["factory_PairCreated"]["feeds"] == [{"contract": "pair", "parameter": "pair"}]
    assert tables["pair_Swap"]["factory"] == {"contract": "factory", "table": "factory_PairCreated"}
    for broken, why in [
        (ok.replace("parameter: pair", "parameter: token0x"), "factory.parameter"),
        (ok.replace("event: PairCreated", "event: Nope"), "factory.event"),
        (ok.replace("contract: factory,", "contract: pair,"), "factory.contract"),
        (ok + "    address: [" + FACTORY + "]\n", "exactly one of address"),
        (ok.replace("abi: ", "abi_file: x.json, abi_: "), "abi"),
    ]:
        with pytest.raises(ValidationError) as caught:
            parse_spec_documents(chain_doc(broken))
        assert why in caught.value.detail
    with pytest.raises(ValidationError) as caught:
        parse_spec_documents(chain_doc(ok, "  blocks: {cryo_dataset: blocks}\n"))
    assert "cryo_dataset: logs" in caught.value.detail


def test_abi_files_are_inlined_relative_to_the_spec(tmp_path: Path) -> None:
    art = pools_artifact()
    (tmp_path / "factory.json").write_text(json.dumps(art["factory"]))  # an artifact: {abi, ...}
    text = chain_doc(f"contracts:\n  factory: {{address: ['{FACTORY}'], abi_file: factory.json}}\n")
    inlined = inline_abi_files(text, tmp_path)
    (doc,) = yaml.safe_load_all(inlined)
    assert doc["contracts"]["factory"]["abi"] == art["factory"]["abi"]
    assert "abi_file" not in doc["contracts"]["factory"]
    parse_spec_documents(inlined)
    (tmp_path / "bad.json").write_text('{"not": "an abi"}')
    with pytest.raises(ValidationError, match="holds no JSON ABI"):
        inline_abi_files(text.replace("factory.json", "bad.json"), tmp_path)
    with pytest.raises(ValidationError, match="cannot read"):
        inline_abi_files(text.replace("factory.json", "missing.json"), tmp_path)
    # Not inlined (the API path): refused with the way out.
    with pytest.raises(ValidationError, match="abi_file is read by `trace apply FILE`"):
        parse_spec_documents(text)


def test_catalog_names_rank_full_then_short_then_bare_and_drop_ambiguous_ones() -> None:
    names = ["a.blocks", "a.logs", "b.blocks", "a_blocks", "prices", "x-y.blocks"]
    aliases = relation_aliases(names, "a")
    assert aliases["a.blocks"] == "a.blocks"
    assert aliases["blocks"] == "a.blocks"  # short names of the default job
    assert aliases["logs"] == "a.logs"
    assert aliases["a_blocks"] == "a_blocks"  # a full name wins over a bare alias
    assert aliases["b_blocks"] == "b.blocks"
    assert aliases["x_y_blocks"] == "x-y.blocks"
    assert aliases["prices"] == "prices"
    assert "a_logs" in aliases
    no_default = relation_aliases(names, None)
    assert "blocks" not in no_default  # without a default job: no short names
    assert default_job(names, ["a.blocks", "a.logs"]) == "a"
    assert default_job(names, ["a.blocks", "b.blocks"]) is None
    clash = relation_aliases(["a-b.c", "a_b.c"], None)
    assert clash["a-b.c"] == "a-b.c" and "a_b_c" not in clash  # two relations: nobody's


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM 'x.parquet'",
        'WITH "x.csv" AS (SELECT 1) SELECT * FROM "x.csv"',
        "SELECT * FROM secret",
        "SELECT * FROM system.main.duckdb_settings",
        "SELECT * FROM blocks, other",
    ],
)
def test_the_gate_refuses_names_and_readers_it_does_not_grant(sql: str) -> None:
    with pytest.raises(SqlRejected):
        check_relations(check_sql(sql, None), {"blocks", "dataset"})


def test_the_gate_rewrites_every_name_to_one_quoted_relation() -> None:
    gated = check_sql('SELECT b.x FROM "j".blocks b JOIN "j.logs" USING (x) JOIN blocks', None)
    assert gated.relations == ("j.blocks", "j.logs", "blocks")
    assert '"j.blocks" AS b' in gated.sql and '"j.logs" USING' in gated.sql
    assert check_sql("SELECT lower(hex(x)) FROM dataset").relations == ("dataset",)


WORD_TYPES = [
    "uint8",
    "uint64",
    "uint256",
    "int8",
    "int128",
    "int256",
    "address",
    "bool",
    "bytes4",
    "bytes32",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(WORD_TYPES), min_size=1, max_size=4),
    st.data(),
)
def test_the_static_word_fast_path_agrees_with_eth_abi(
    types: list[str], data: st.DataObject
) -> None:
    """Random words — valid values, bad padding, out-of-range integers — decode the same
    through the fast path as through eth_abi (or both refuse)."""
    params = ", ".join(f"{t} p{i}" for i, t in enumerate(types))
    event = parse_signature(f"event E({params})")
    words = []
    for _ in types:
        kind = data.draw(st.sampled_from(["small", "any", "negative"]))
        if kind == "small":
            words.append(f"{data.draw(st.integers(0, 2**8)):064x}")
        elif kind == "negative":
            words.append(f"{(2**256 - data.draw(st.integers(1, 2**130))):064x}")
        else:
            words.append(f"{data.draw(st.integers(0, 2**256 - 1)):064x}")
    row = {
        "block_number": 1,
        "transaction_index": 0,
        "log_index": 0,
        "transaction_hash": "0x",
        "address": "0x",
        "data": "0x" + "".join(words),
    }
    fast, slow = Decoder(event), Decoder(event)
    assert fast.words is not None
    got_fast = fast._fast([None, None, None], row["data"])
    got_slow = slow._slow([None, None, None], row["data"])
    if got_slow is None:
        assert got_fast is None
        return
    assert got_fast is not None
    for p in event.params:
        a, b = got_fast[p.name], got_slow[p.name]
        if p.type == "address":
            assert a == b.lower()
        else:
            assert a == b
