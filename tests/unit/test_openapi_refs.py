"""Every `$ref` in the OpenAPI documents of the dispatcher and the query service resolves
(generated clients and API fuzzers need a self-contained document)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trace_platform.config import Settings


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolves(doc: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False
    node: Any = doc
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("app", ["dispatcher", "query"])
def test_every_schema_reference_resolves(app: str, tmp_path: Path) -> None:
    settings = Settings.load({"home": tmp_path}, env={})
    if app == "dispatcher":
        from trace_platform.dispatcher.app import create_app
    else:
        from trace_platform.query.app import create_app  # type: ignore[assignment]
    doc = create_app(settings).openapi()
    found = refs(doc)
    if app == "dispatcher":
        assert found, "the document uses references (validation errors, task views)"
    assert [r for r in found if not resolves(doc, r)] == []
    batch = doc["paths"]["/internal/task-complete-batch"] if app == "dispatcher" else None
    if batch is not None:
        schema = batch["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "$defs" not in str(schema)
