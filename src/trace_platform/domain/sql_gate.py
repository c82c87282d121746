"""The SQL gate (SPEC §9): exactly one read-only SELECT over the attached relation(s).

An allowlist, not a denylist: the statement must parse (DuckDB dialect) to a single SELECT /
set operation; every relation must be a name (bare, quoted, or dotted `job.stream`), and every
function must be on the list below. Anything else — table functions, file or URL readers,
string relations, settings, secrets, PRAGMA/SET/ATTACH/COPY/INSTALL/LOAD/DDL/DML — is rejected
with a stable code. The gate is a pure function of the text: it returns the relation names
the query reads (`GatedQuery.relations`, each written as one quoted name in the SQL it
returns), and the query binding then refuses any name that is neither granted to the caller
nor a CTE of the query (`check_relations`). Errors never echo the SQL; a refusal names the
function or relation only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from trace_platform.domain.catalog import unresolved_reason

MAX_SQL_LENGTH = 20_000
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns with the SQL text

ALLOWED_FUNCTIONS = frozenset(
    {
        # aggregates
        "COUNT",
        "SUM",
        "AVG",
        "MIN",
        "MAX",
        "STDDEV",
        "STDDEV_POP",
        "STDDEV_SAMP",
        "VARIANCE",
        "VAR_POP",
        "VAR_SAMP",
        "MEDIAN",
        "QUANTILE_CONT",
        "QUANTILE_DISC",
        "APPROX_DISTINCT",
        "APPROX_COUNT_DISTINCT",
        "ANY_VALUE",
        "ARG_MAX",
        "ARG_MIN",
        "ARGMAX",
        "ARGMIN",
        "BOOL_AND",
        "BOOL_OR",
        "LOGICAL_AND",
        "LOGICAL_OR",
        "COUNT_IF",
        "COUNTIF",
        "FIRST",
        "LAST",
        "PERCENTILE_CONT",
        "PERCENTILE_DISC",
        "CORR",
        "COVAR_POP",
        "COVAR_SAMP",
        "GROUP_CONCAT",
        "STRING_AGG",
        "ARRAY_AGG",
        "LIST",
        # window
        "ROW_NUMBER",
        "RANK",
        "DENSE_RANK",
        "PERCENT_RANK",
        "CUME_DIST",
        "NTILE",
        "LAG",
        "LEAD",
        "FIRST_VALUE",
        "LAST_VALUE",
        "NTH_VALUE",
        # scalar
        "ABS",
        "ROUND",
        "FLOOR",
        "CEIL",
        "CEILING",
        "SIGN",
        "SQRT",
        "POW",
        "POWER",
        "EXP",
        "LN",
        "LOG",
        "LOG10",
        "LOG2",
        "MOD",
        "GREATEST",
        "LEAST",
        "COALESCE",
        "NULLIF",
        "IF",
        "IFNULL",
        "CAST",
        "TRY_CAST",
        "LOWER",
        "UPPER",
        "LENGTH",
        "SUBSTRING",
        "SUBSTR",
        "CONCAT",
        "CONCAT_WS",
        "TRIM",
        "LTRIM",
        "RTRIM",
        "REPLACE",
        "LEFT",
        "RIGHT",
        "LPAD",
        "RPAD",
        "REVERSE",
        "STARTS_WITH",
        "ENDS_WITH",
        "CONTAINS",
        "STRPOS",
        "POSITION",
        "REGEXP_MATCHES",
        "REGEXP_LIKE",
        "REGEXP_REPLACE",
        "REGEXP_EXTRACT",
        "SPLIT_PART",
        "HEX",
        "UNHEX",
        "MD5",
        "SHA256",
        "SHA2",  # sqlglot's name for sha256(x)
        "EXISTS",
        "DATE_TRUNC",
        "DATE_BIN",
        "TIME_BUCKET",
        "TIMESTAMP_TRUNC",
        "DATETRUNC",
        "DATE_PART",
        "EXTRACT",
        "EPOCH",
        "EPOCH_MS",
        "TO_TIMESTAMP",
        "STRFTIME",
        "TIME_TO_STR",
        "STR_TO_TIME",
        "STRPTIME",
        "DATE_DIFF",
        "DATEDIFF",
        "DATE_ADD",
        "DATE_SUB",
        "TIMESTAMP_ADD",
        "TIMESTAMP_DIFF",
        "UNIX_TO_TIME",
        "TIME_TO_UNIX",
        "YEAR",
        "MONTH",
        "DAY",
        "HOUR",
        "MINUTE",
        "SECOND",
        "WEEK",
        "DAYOFWEEK",
        "DAY_OF_WEEK",
        "CURRENT_DATE",
        "CURRENT_TIMESTAMP",
        "NOW",
        "STRUCT_EXTRACT",
        "ARRAY_LENGTH",
        "ARRAY_SIZE",
        "ARRAY_CONTAINS",
        "ARRAY_TO_STRING",
        "CARDINALITY",
        "BIT_LENGTH",
        "OCTET_LENGTH",
        "CASE",
        "INTERVAL",
        "DATE",
        "TIMESTAMP",
        "TS_OR_DS_TO_DATE",
        "STR_POSITION",
        "STARTSWITH",
        "ENDSWITH",
        "DATE_FROM_PARTS",
        "TRY",
        "NVL",
        "ISNAN",
        "ISINF",
    }
)

# Expression types that are never allowed anywhere in the tree.
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = (
    exp.Into,
    exp.Command,
    exp.Pragma,
    exp.Set,
    exp.Attach,
    exp.Detach,
    exp.Copy,
    exp.Create,
    exp.Drop,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Alter,
    exp.TruncateTable,
    exp.Use,
    exp.Describe,
    exp.Show,
    exp.Parameter,
    exp.SessionParameter,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
)
_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except)
# sqlglot folds some function pairs into one node of its own; DuckDB runs the pair, so the
# node is allowed when every function it stands for is.
_FOLDED: dict[str, tuple[str, ...]] = {"LOWER_HEX": ("LOWER", "HEX")}
PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_RELATIONS = 16


class SqlRejected(ValueError):
    """Stable code + a human reason; neither contains the SQL."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class GatedQuery:
    sql: str  # the normalised SQL that is executed (re-generated from the checked tree)
    columns: tuple[str, ...]
    sha256: str
    relations: tuple[str, ...] = ()  # names read that are not CTEs of the query (lower case)
    ctes: frozenset[str] = frozenset()


def shown(name: str) -> str:
    """A relation or function name as an error may show it: printable, at most 64 chars."""
    return "".join(c for c in name if c.isprintable())[:64]


def check_relations(
    gated: GatedQuery, granted: Collection[str], held: Collection[str] = ()
) -> None:
    """Refuse a query that reads a name the caller is not granted (fail closed). `held`: the
    full names of the relations the caller holds, so that the refusal of a name several of
    them answer to names them (`catalog.unresolved_reason`)."""
    for name in gated.relations:
        if name not in granted:
            raise SqlRejected(
                "sql_relation_not_allowed", unresolved_reason(name, held, shown(name))
            )


def _relation_name(node: exp.Table) -> str:
    """`a`, `"a.b"` and `a.b` (db + table) all name one relation, written `a.b`; anything
    but identifiers (a function, a string, a file) is refused."""
    parts = [node.args.get("catalog"), node.args.get("db"), node.this]
    names: list[str] = []
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, exp.Identifier):
            raise SqlRejected("sql_relation_not_allowed", "only named relations may be read")
        names.append(str(part.name))
    name = ".".join(names).lower()
    if not name or len(name) > 200:
        raise SqlRejected("sql_relation_not_allowed", "only named relations may be read")
    return name


def _bound_parameter(node: exp.Placeholder, parameters: int) -> bool:
    """`$k` with 1 <= k <= parameters: a value trusted code binds (never `?` or `$name`)."""
    index = str(node.this or "")
    return index.isdigit() and 1 <= int(index) <= parameters


def _function_allowed(name: str) -> bool:
    return name in ALLOWED_FUNCTIONS or all(
        part in ALLOWED_FUNCTIONS for part in _FOLDED.get(name, ("",))
    )


def sql_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    return str(node.sql_name()).upper()


def check_sql(
    sql: str, relations: Collection[str] | None = frozenset({"dataset"}), parameters: int = 0
) -> GatedQuery:
    """Accept one read-only SELECT, or raise SqlRejected. Every name read must be one of
    `relations` (or a CTE); with None, the caller checks the names it grants. `parameters`:
    how many prepared-statement parameters (`$1`..`$n`) trusted code binds values to (a
    saved query's, `domain.saved_query`); none are allowed otherwise."""
    if not isinstance(sql, str) or not sql.strip():
        raise SqlRejected("sql_empty", "SQL is empty")
    if len(sql) > MAX_SQL_LENGTH:
        raise SqlRejected("sql_too_long", f"SQL is longer than {MAX_SQL_LENGTH} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf") and c not in "\t\n\r" for c in sql):
        raise SqlRejected("sql_bad_characters", "SQL contains control or format characters")
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError):
        raise SqlRejected("sql_unparseable", "SQL could not be parsed") from None
    if len(statements) != 1:
        raise SqlRejected("sql_not_single_statement", "exactly one statement is allowed")
    tree = statements[0]
    if not isinstance(tree, _ROOTS):
        raise SqlRejected("sql_not_select", "only SELECT (or WITH ... SELECT) is allowed")
    ctes: set[str] = set()
    for cte in tree.find_all(exp.CTE):
        name = str(cte.alias_or_name).lower()
        if not PLAIN_NAME.match(name):
            raise SqlRejected("sql_relation_not_allowed", "a CTE needs a plain name")
        ctes.add(name)
    read: dict[str, None] = {}
    for node in list(tree.walk()):
        if isinstance(node, _FORBIDDEN_NODES) or (
            isinstance(node, exp.Placeholder) and not _bound_parameter(node, parameters)
        ):
            raise SqlRejected("sql_forbidden_construct", "statement kind or clause not allowed")
        if isinstance(node, exp.Table):
            name = _relation_name(node)
            if name in ctes and not node.args.get("db"):
                continue
            read[name] = None
            alias = node.args.get("alias")
            last = node.this
            node.set("catalog", None)
            node.set("db", None)
            node.set("this", exp.to_identifier(name, quoted=True))
            if alias is None and isinstance(last, exp.Identifier) and last.name.lower() != name:
                # DuckDB names an unaliased `a.b` by its last part: keep that working.
                node.set("alias", exp.TableAlias(this=exp.to_identifier(last.name)))
        elif isinstance(node, exp.Func) and not isinstance(node, exp.Connector):  # AND/OR
            name = _function_name(node)
            if not _function_allowed(name):
                raise SqlRejected(
                    "sql_function_not_allowed", f"function {shown(name)} is not allowed"
                )
    if len(read) > MAX_RELATIONS:
        raise SqlRejected(
            "sql_too_many_relations", f"a query may read at most {MAX_RELATIONS} relations"
        )
    columns = tuple(sorted({str(c.name) for c in tree.find_all(exp.Column) if c.name}))
    normalised = tree.sql(dialect="duckdb", comments=False)
    gated = GatedQuery(normalised, columns, sql_hash(sql), tuple(read), frozenset(ctes))
    if relations is not None:
        check_relations(gated, {r.lower() for r in relations})
    return gated
