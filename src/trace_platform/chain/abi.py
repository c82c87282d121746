"""Contract events (SPEC §15): ABI entries or human-readable signatures → typed columns, and
the decoding of raw log rows into them (with `eth_abi`).

Column types, chosen to be lossless:

- `address` → VARCHAR `0x…` (lower case, as cryo writes addresses); `bool` → BOOLEAN;
  `bytesN`, `bytes` → VARCHAR `0x…`; `string` → VARCHAR;
- integers of at most 64 bits → BIGINT / UBIGINT;
- wider integers (`uint256`, ...) → two columns: NAME as DECIMAL(38, 0) (NULL when the value
  needs more than 38 digits) for arithmetic, and NAME_raw as the exact decimal text;
- arrays → LIST, tuples → STRUCT, decoded recursively (wide integers inside them are exact
  decimal text);
- an indexed parameter of a dynamic type (`string`, `bytes`, arrays, tuples) is stored as its
  32-byte topic (`0x…`): the log holds only its hash.

Every table also has block_number, block_hash, transaction_index, log_index,
transaction_hash and address (the emitting contract) from the raw log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa

LOG_COLUMNS = (
    "block_number",
    "block_hash",
    "transaction_index",
    "log_index",
    "transaction_hash",
    "address",
)
EVENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_INT = re.compile(r"^(u?)int(\d*)$")
_BYTES_N = re.compile(r"^bytes(\d+)$")
_SIGNATURE = re.compile(
    r"\s*(?:event\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*(anonymous)?\s*;?\s*"
)
DECIMAL_DIGITS = 38
_DECIMAL_MAX = 10**DECIMAL_DIGITS


class AbiError(ValueError):
    """An event definition that cannot be used (named, with why)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # canonical: uint256, address, (uint256,address)[], ...
    indexed: bool = False
    components: tuple[Param, ...] = ()  # of a tuple type (or tuple array)


@dataclass(frozen=True)
class Event:
    name: str
    params: tuple[Param, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.params)})"

    @property
    def topic0(self) -> str:
        from eth_utils.crypto import keccak

        return "0x" + keccak(text=self.signature).hex()

    def column_names(self) -> list[str]:
        return [name for name, _ in self.schema_fields()]

    def schema_fields(self) -> list[tuple[str, pa.DataType]]:
        fields: list[tuple[str, pa.DataType]] = [
            ("block_number", pa.uint32()),
            ("block_hash", pa.string()),
            ("transaction_index", pa.uint32()),
            ("log_index", pa.uint32()),
            ("transaction_hash", pa.string()),
            ("address", pa.string()),
        ]
        for p in self.params:
            if p.indexed and is_dynamic(p):
                fields.append((p.name, pa.string()))
            elif is_wide_int(p.type):
                fields.append((p.name, pa.decimal128(DECIMAL_DIGITS, 0)))
                fields.append((f"{p.name}_raw", pa.string()))
            else:
                fields.append((p.name, arrow_type(p)))
        return fields

    def schema(self) -> pa.Schema:
        return pa.schema(self.schema_fields())


def _canonical(t: str) -> str:
    m = _INT.match(t)
    if m:
        bits = m.group(2) or "256"
        if int(bits) % 8 or not 8 <= int(bits) <= 256:
            raise AbiError(f"type {t!r} is not a valid integer type")
        return f"{m.group(1)}int{bits}"
    if t == "byte":
        return "bytes1"
    m = _BYTES_N.match(t)
    if m and not 1 <= int(m.group(1)) <= 32:
        raise AbiError(f"type {t!r} is not a valid bytes type")
    if t in ("address", "bool", "string", "bytes") or m:
        return t
    raise AbiError(f"type {t!r} is not supported")


def _split_array(t: str) -> tuple[str, str]:
    """`uint256[2][]` → (`uint256`, `[2][]`)."""
    at = t.find("[")
    if at < 0:
        return t, ""
    suffix = t[at:]
    if not re.fullmatch(r"(\[\d*\])+", suffix):
        raise AbiError(f"type {t!r} is not a valid array type")
    return t[:at], suffix


def is_dynamic(p: Param) -> bool:
    base, suffix = _split_array(p.type) if not p.type.startswith("(") else ("tuple", "")
    return bool(suffix) or p.components != () or base in ("string", "bytes")


def is_wide_int(t: str) -> bool:
    m = _INT.match(t)
    return m is not None and int(m.group(2) or "256") > 64


def arrow_type(p: Param) -> pa.DataType:
    t = p.type
    if p.components:  # tuple or tuple array: `(…)` + suffix
        close = _matching_paren(t)
        suffix = t[close + 1 :]
        inner: pa.DataType = pa.struct(
            [pa.field(c.name, arrow_type(c), nullable=True) for c in p.components]
        )
    else:
        base, suffix = _split_array(t)
        inner = _scalar_arrow(base)
    for _ in re.findall(r"\[\d*\]", suffix):
        inner = pa.list_(inner)
    return inner


def _scalar_arrow(base: str) -> pa.DataType:
    m = _INT.match(base)
    if m:
        bits = int(m.group(2))
        if bits > 64:
            return pa.string()  # nested wide integer: exact decimal text
        return pa.uint64() if m.group(1) else pa.int64()
    if base == "bool":
        return pa.bool_()
    return pa.string()


def _matching_paren(t: str) -> int:
    depth = 0
    for i, c in enumerate(t):
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return i
    raise AbiError(f"type {t!r} has unbalanced parentheses")


def split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for c in text:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += c == "("
        depth -= c == ")"
        cur += c
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def _param_of_text(text: str, position: int, top: bool) -> Param:
    """`uint256 indexed amount`, `(address a, uint b)[] legs`, `address`."""
    text = " ".join(text.split())
    components: tuple[Param, ...] = ()
    if text.startswith("(") or text.startswith("tuple("):
        if text.startswith("tuple"):
            text = text[len("tuple") :]
        close = _matching_paren(text)
        inner = text[1:close]
        rest = text[close + 1 :]
        suffix_match = re.match(r"^((?:\[\d*\])*)\s*(.*)$", rest)
        assert suffix_match is not None
        suffix, rest = suffix_match.group(1), suffix_match.group(2)
        components = tuple(
            _param_of_text(part, i, top=False) for i, part in enumerate(split_top(inner))
        )
        canonical = "(" + ",".join(c.type for c in components) + ")" + suffix
        words = rest.split()
    else:
        words = text.split()
        if not words:
            raise AbiError("an event parameter has no type")
        base, suffix = _split_array(words[0])
        canonical = _canonical(base) + suffix
        words = words[1:]
    indexed = False
    if words and words[0] == "indexed":
        if not top:
            raise AbiError("only event parameters may be indexed")
        indexed, words = True, words[1:]
    if len(words) > 1:
        raise AbiError(f"cannot read event parameter {text!r}")
    name = words[0] if words else f"arg{position}"
    return Param(_param_name(name), canonical, indexed, components)


def _param_name(name: str) -> str:
    if not _PARAM_NAME.match(name):
        raise AbiError(f"parameter name {name!r} is not a plain identifier")
    if name in LOG_COLUMNS:
        return f"{name}_"  # a parameter named like a log column keeps both
    return name


def parse_signature(text: str) -> Event:
    """A human-readable event: `event Swap(address indexed sender, uint amount0In, ...)`."""
    m = _SIGNATURE.fullmatch(text)
    if m is None:
        raise AbiError(f"cannot read event signature {text[:80]!r}")
    if m.group(3):
        raise AbiError(f"event {m.group(1)} is anonymous (it has no topic to find it by)")
    params = tuple(
        _param_of_text(part, i, top=True) for i, part in enumerate(split_top(m.group(2)))
    )
    return _checked(Event(m.group(1), params))


def _abi_param(entry: dict[str, Any], position: int, top: bool) -> Param:
    t = entry.get("type")
    if not isinstance(t, str):
        raise AbiError("an ABI parameter has no type")
    components: tuple[Param, ...] = ()
    if t.startswith("tuple"):
        comps = entry.get("components")
        if not isinstance(comps, list):
            raise AbiError("a tuple parameter has no components")
        components = tuple(_abi_param(c, i, top=False) for i, c in enumerate(comps))
        canonical = "(" + ",".join(c.type for c in components) + ")" + t[len("tuple") :]
    else:
        base, suffix = _split_array(t)
        canonical = _canonical(base) + suffix
    name = entry.get("name") or f"arg{position}"
    indexed = bool(entry.get("indexed")) if top else False
    return Param(_param_name(str(name)), canonical, indexed, components)


def events_of_abi(abi: list[Any]) -> list[Event]:
    """The (non-anonymous) events of a JSON ABI."""
    out = []
    for entry in abi:
        if not isinstance(entry, dict) or entry.get("type") != "event":
            continue
        if entry.get("anonymous"):
            continue
        inputs = entry.get("inputs") or []
        params = tuple(_abi_param(p, i, top=True) for i, p in enumerate(inputs))
        out.append(_checked(Event(str(entry.get("name")), params)))
    return out


def _checked(event: Event) -> Event:
    if not EVENT_NAME.match(event.name):
        raise AbiError(f"event name {event.name!r} is not a plain identifier")
    names = event.column_names()
    if len(set(n.lower() for n in names)) != len(names):
        raise AbiError(f"event {event.name} has two parameters with one name")
    if sum(p.indexed for p in event.params) > 3:
        raise AbiError(f"event {event.name} has more than 3 indexed parameters")
    return event


def _param_abi(p: Param) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": p.name.rstrip("_") if p.name.rstrip("_") in LOG_COLUMNS else p.name
    }
    if p.components:
        close = _matching_paren(p.type)
        entry["type"] = "tuple" + p.type[close + 1 :]
        entry["components"] = [_param_abi(c) for c in p.components]
    else:
        entry["type"] = p.type
    return entry


def event_abi(event: Event) -> dict[str, Any]:
    """The event as one JSON ABI entry (canonical types): what a spec stores."""
    inputs = []
    for p in event.params:
        entry = _param_abi(p)
        entry["indexed"] = p.indexed
        inputs.append(entry)
    return {"type": "event", "name": event.name, "inputs": inputs, "anonymous": False}


def event_of_abi(entry: dict[str, Any]) -> Event:
    (event,) = events_of_abi([entry])
    return event


# -- decoding -------------------------------------------------------------------------------


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _value(p: Param, v: Any) -> Any:
    """An eth_abi value → its column value (nested: wide integers as text)."""
    if p.components:
        close = _matching_paren(p.type)
        dims = len(re.findall(r"\[\d*\]", p.type[close + 1 :]))
        return _nested(
            v, dims, lambda t: {c.name: _value(c, x) for c, x in zip(p.components, t, strict=True)}
        )
    base, suffix = _split_array(p.type)
    dims = len(re.findall(r"\[\d*\]", suffix))
    return _nested(v, dims, lambda x: _scalar(base, x))


def _nested(v: Any, dims: int, leaf: Any) -> Any:
    if dims == 0:
        return leaf(v)
    return [_nested(x, dims - 1, leaf) for x in v]


def _scalar(base: str, v: Any) -> Any:
    if isinstance(v, bytes):
        return _hex(v)
    if base == "address":
        return str(v).lower()
    if isinstance(v, int) and not isinstance(v, bool) and is_wide_int(base):
        return str(v)
    return v


def _bytes_of(text: Any) -> bytes:
    if text is None:
        return b""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    s = str(text)
    return bytes.fromhex(s[2:] if s.startswith("0x") else s)


UNDECODABLE_IDS = ("block_number", "log_index", "transaction_hash")


class Decoder:
    """Decodes one event's logs (rows with topic1..3 and data as `0x…` text or bytes). A log
    it cannot decode is counted in `undecodable` (the first one's ids kept), never dropped
    silently: a wrong ABI must show, not yield an empty table."""

    def __init__(self, event: Event) -> None:
        from eth_abi.codec import ABICodec
        from eth_abi.registry import registry

        self.event = event
        self.codec = ABICodec(registry)
        self.indexed = [p for p in event.params if p.indexed]
        self.body = [p for p in event.params if not p.indexed]
        self.body_types = [p.type for p in self.body]
        self.columns: dict[str, list[Any]] = {name: [] for name in event.column_names()}
        head = [(p, word_reader(p)) for p in self.indexed]
        body = [(p, word_reader(p)) for p in self.body]
        static = all(w is not None for _, w in head + body)
        self.words: tuple[list[Any], list[Any]] | None = (head, body) if static else None
        self.undecodable = 0
        self.first_undecodable: dict[str, Any] | None = None

    def add(self, row: dict[str, Any]) -> bool:
        """Decode one log into the columns; False (nothing added; counted in `undecodable`)
        when it does not decode as this event (e.g. a same-signature event with other
        indexed parameters)."""
        if self._add(row):
            return True
        self.undecodable += 1
        if self.first_undecodable is None:
            self.first_undecodable = {k: row.get(k) for k in UNDECODABLE_IDS}
        return False

    def _add(self, row: dict[str, Any]) -> bool:
        topics = [row.get(f"topic{i}") for i in range(1, 4)]
        if len(self.indexed) < 3 and topics[len(self.indexed)] is not None:
            return False  # more topics than this event has indexed parameters
        values = self._fast(topics, row.get("data")) if self.words is not None else None
        if values is None:
            values = self._slow(topics, row.get("data"))
            if values is None:
                return False
        for name in LOG_COLUMNS:
            self.columns[name].append(row.get(name))
        for p in self.event.params:
            v = values[p.name]
            if p.indexed and is_dynamic(p):
                self.columns[p.name].append(v)
            elif is_wide_int(p.type):
                self.columns[p.name].append(Decimal(v) if abs(v) < _DECIMAL_MAX else None)
                self.columns[f"{p.name}_raw"].append(str(v))
            else:
                self.columns[p.name].append(_value(p, v))
        return True

    def _fast(self, topics: list[Any], data: Any) -> dict[str, Any] | None:
        """Static words only, read straight from cryo's `0x…` text (eth_abi's rules: exact
        padding, values within their type); None hands the log to eth_abi."""
        assert self.words is not None
        if not isinstance(data, str) or len(data) != 2 + 64 * len(self.body):
            return None
        values: dict[str, Any] = {}
        try:
            for (p, word), topic in zip(self.words[0], topics, strict=False):
                if not isinstance(topic, str) or len(topic) != 66:
                    return None
                values[p.name] = word(topic[2:].lower())
            text = data[2:].lower()
            for i, (p, word) in enumerate(self.words[1]):
                values[p.name] = word(text[64 * i : 64 * i + 64])
        except ValueError:
            return None
        return values

    def _slow(self, topics: list[Any], data: Any) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        try:
            for p, topic in zip(self.indexed, topics, strict=False):
                raw = _bytes_of(topic)
                if len(raw) != 32:
                    return None
                if is_dynamic(p):
                    values[p.name] = _hex(raw)
                else:
                    (values[p.name],) = self.codec.decode([p.type], raw)
            decoded = self.codec.decode(self.body_types, _bytes_of(data))
        except Exception:  # eth_abi raises many kinds for undecodable data
            return None
        for p, v in zip(self.body, decoded, strict=True):
            values[p.name] = v
        return values

    def __len__(self) -> int:
        return len(self.columns["block_number"])

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=self.event.schema())


def word_reader(p: Param) -> Any:
    """A reader of one 32-byte word (64 hex digits) of a static scalar type, enforcing the
    padding and range eth_abi enforces (ValueError otherwise); None for other types."""
    t = p.type
    m = _INT.match(t)
    if m:
        bits = int(m.group(2) or "256")
        if m.group(1):
            limit = 1 << bits

            def read_uint(w: str) -> int:
                v = int(w, 16)
                if v >= limit:
                    raise ValueError("padding")
                return v

            return read_uint
        low, high = -(1 << (bits - 1)), 1 << (bits - 1)

        def read_int(w: str) -> int:
            v = int(w, 16)
            if v >= 1 << 255:
                v -= 1 << 256
            if not low <= v < high:
                raise ValueError("padding")
            return v

        return read_int
    if t == "address":

        def read_address(w: str) -> str:
            if w[:24] != "0" * 24:
                raise ValueError("padding")
            return "0x" + w[24:]

        return read_address
    if t == "bool":

        def read_bool(w: str) -> bool:
            v = int(w, 16)
            if v > 1:
                raise ValueError("not a bool")
            return v == 1

        return read_bool
    m = _BYTES_N.match(t)
    if m:
        n = 2 * int(m.group(1))

        def read_bytes(w: str) -> bytes:
            if w[n:].strip("0"):
                raise ValueError("padding")
            return bytes.fromhex(w[:n])

        return read_bytes
    return None
