"""What a person may read of the engine's own error about their query (SPEC §4, §9: errors
never echo the SQL).

DuckDB's messages say what is wrong — the column that does not exist and its candidates,
the function whose argument types do not match — but they also quote the query: a `LINE n:`
excerpt with a caret under the culprit, and values, some of them the query's own literals
(`Could not convert string 'hunter2' to INT32`). `public_reason` keeps the first and drops
the second, fail closed:

1. the excerpt, its caret line and a function's list of candidate signatures are dropped;
2. a quoted part is kept only when it is a name the query or the relations it reads use as
   an identifier (a column, an alias, a relation, a keyword), or a function signature made
   of such a name and type names (`'sum(VARCHAR)'`); any other quoted part becomes `'…'`
   (a literal of the query, a value of the data);
3. what is left is scanned for every word of the query's literals (strings and numbers, 3
   characters or more) that is not such a name: each is replaced by `…`, so a literal that
   smuggles quotes of its own cannot carry text out either.

Where the caret points at something the person wrote once, its position in their SQL is
added (line and column: numbers, not text). Pure: the query service applies it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlglot import Token, TokenType
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError

MAX_REASON = 600
ELIDED = "…"
_EXCERPT = re.compile(r"^LINE (\d+): (.*)$")
_CARET = re.compile(r"^( *)(\^+)\s*$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_SIGNATURE = re.compile(r"^([^()\s]{1,64})\(([A-Z0-9_\[\](), ]*)\)$")
_WORD = re.compile(r"[A-Za-z0-9_]{3,}")
_LITERALS = frozenset({TokenType.NUMBER}) | frozenset(
    t for t in TokenType if t.name.endswith("STRING")
)


@dataclass(frozen=True)
class _Lexed:
    names: frozenset[str]  # lower case: every non-literal token's text
    literals: tuple[str, ...]
    tokens: tuple[Token, ...]


def _lex(sql: str) -> _Lexed | None:
    try:
        tokens = tuple(Dialect.get_or_raise("duckdb").tokenize(sql))
    except SqlglotError:
        return None
    names = frozenset(t.text.lower() for t in tokens if t.token_type not in _LITERALS)
    literals = tuple(t.text for t in tokens if t.token_type in _LITERALS)
    return _Lexed(names, literals, tokens)


def _is_name(text: str, names: Collection[str]) -> bool:
    low = text.lower()
    return bool(low) and (low in names or all(p in names for p in low.split(".")))


def _keep_quoted(match: re.Match[str], names: Collection[str]) -> str:
    quote, content = match.group(0)[0], match.group(0)[1:-1]
    if _is_name(content, names):
        return match.group(0)
    signature = _SIGNATURE.match(content)
    if signature is not None and _is_name(signature.group(1), names):
        return match.group(0)
    return f"{quote}{ELIDED}{quote}"


def _marked(lines: list[str]) -> str | None:
    """The text the caret line underlines in the excerpt before it, if any."""
    for i in range(len(lines) - 1):
        excerpt, caret = _EXCERPT.match(lines[i]), _CARET.match(lines[i + 1])
        if excerpt is None or caret is None:
            continue
        start = len(caret.group(1)) - (len(lines[i]) - len(excerpt.group(2)))
        if start >= 0:
            return excerpt.group(2)[start : start + len(caret.group(2))]
    return None


def _position(sql: str, lexed: _Lexed, marked: str | None) -> str:
    """` (line L, column C)` of the one place the person's SQL holds the marked tokens."""
    if not marked:
        return ""
    wanted = _lex(marked)
    if wanted is None or not wanted.tokens:
        return ""
    shape = [(t.token_type, t.text.lower()) for t in wanted.tokens]
    have = [(t.token_type, t.text.lower()) for t in lexed.tokens]
    starts = [i for i in range(len(have)) if have[i : i + len(shape)] == shape]
    if len(starts) != 1:
        return ""
    at = lexed.tokens[starts[0]].start
    line = sql.count("\n", 0, at) + 1
    column = at - (sql.rfind("\n", 0, at) + 1) + 1
    return f" (line {line}, column {column})"


def _without_excerpt(lines: Iterable[str]) -> list[str]:
    """Every line but the quoted SQL, its caret and a list of candidate signatures."""
    out: list[str] = []
    candidates = False
    for line in lines:
        if _EXCERPT.match(line) or _CARET.match(line):
            continue
        if line.strip() == "Candidate functions:":
            candidates = True
            continue
        if candidates and line.startswith("\t"):
            continue
        candidates = False
        if line.strip():
            out.append(line.strip())
    return out


def public_reason(
    message: str, sql: str, executed: str, relation_names: Collection[str], fallback: str
) -> str:
    """The engine's `message` about a query, safe to show: `sql` as the person wrote it,
    `executed` as the engine ran it (the gate's normalised form), `relation_names` the
    names and columns of the relations it read; `fallback` when nothing useful is left."""
    mine, ran = _lex(sql), _lex(executed)
    if mine is None or ran is None:
        return fallback
    names = mine.names | ran.names | {n.lower() for n in relation_names}
    lines = message.splitlines()
    text = " ".join(_without_excerpt(lines))
    text = _QUOTED.sub(lambda m: _keep_quoted(m, names), text)
    words = {w for lit in mine.literals + ran.literals for w in _WORD.findall(lit)}
    for word in sorted({w for w in words if w.lower() not in names}, key=len, reverse=True):
        bounded = rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])"
        text = re.sub(bounded, ELIDED, text, flags=re.IGNORECASE)
    text = text.strip()
    if not text:
        return fallback
    if len(text) > MAX_REASON:
        text = text[: MAX_REASON - 1] + ELIDED
    return text + _position(sql, mine, _marked(lines))
