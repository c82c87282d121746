"""Platform SQL lives in one place per component: the named statements of `db/sql/*.sql`
(and the migrations), the `db` package's own plumbing, and the DuckDB session the query
engine sets up. Any other module holding SQL text against the databases fails this test.
Queries a user would write over granted relations (`FROM dataset`, `FROM pair_Swap s JOIN
blocks`, in the demo and the examples: catalog names, never a schema-qualified platform
table) are the query service's input, not platform SQL, and are allowed."""

import ast
import re
from pathlib import Path

import trace_platform

SRC = Path(trace_platform.__file__).parent
# The modules that own their SQL: the platform's named statements, and the DuckDB sessions
# of the query engine and of apply's column check (empty tables, no platform data).
OWNERS = ("db/", "query/engine.py", "ops/dag_columns.py")
STATEMENT = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s*\("
    r"|CREATE\s|ALTER\s|DROP\s|COPY\s|ATTACH\s|PRAGMA\s|SET\s+\w+|INSTALL\s|LOAD\s|TRUNCATE\s)"
)  # keywords as SQL is written here (upper case); prose in lower case is not SQL
USER_QUERY = re.compile(
    r"\bFROM\s+(dataset|blocks|transactions|logs|erc20_transfers|pair_\w+|factory_\w+|swaps\b|pool_volume\b"
    r'|"[^"]+\.[^"]+")',  # a DAG job's input, or a relation's quoted full name ("dag.job")
    re.IGNORECASE,
)


def literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
    return None


def sql_literals(path: Path) -> list[tuple[int, str]]:
    found: dict[int, str] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        text = literal_text(node)
        if text is not None and STATEMENT.match(text):
            line = getattr(node, "lineno", 0)
            found[line] = max(found.get(line, ""), text, key=len)
    return sorted(found.items())


def test_platform_sql_lives_in_db_and_its_owner() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(OWNERS) or rel.startswith("examples/"):
            continue
        for line, text in sql_literals(path):
            if USER_QUERY.search(text) and not re.search(r"\b(state|data|public)\.", text):
                continue  # a user's query over the granted relation
            offenders.append(f"{rel}:{line}: {text[:60]!r}")
    assert offenders == []


def test_the_check_finds_sql_where_it_is(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        'A = "SELECT count(*) FROM state.tasks"\n'
        'B = f"UPDATE state.tasks SET status = {1}"\n'
        'C = "select the best option"\n'
    )
    assert [line for line, _ in sql_literals(probe)] == [1, 2]
