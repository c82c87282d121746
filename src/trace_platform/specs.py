"""`trace apply` documents: parse YAML, validate strictly, hand each `kind` to its package.

Errors name the field's path (`streams.logs.chunk_size: ...`) and never echo values that
could be secrets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydantic
import yaml

from trace_platform.alerts.spec import AlertSpec
from trace_platform.chain.spec import ChainSyncSpec
from trace_platform.dag.spec import DagSpec
from trace_platform.domain.errors import ValidationError

MAX_SPEC_BYTES = 256 * 1024
_INPUT_TAGS = ("chain", "dataset", "job")
SPEC_KINDS: dict[str, type[pydantic.BaseModel]] = {
    "chain_sync": ChainSyncSpec,
    "alert": AlertSpec,
    "dag": DagSpec,
}


def _path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("FollowHead", "FixedTarget"))]
    parts = [p for p in parts if p not in ("follow_head", "fixed_target", "FromBlock")]
    parts = [p for p in parts if not p.startswith("literal[")]
    return ".".join(parts) or "(document)"


def describe(exc: pydantic.ValidationError) -> str:
    """One line naming the first failing field."""
    err = exc.errors(include_url=False)[0]
    kind = err.get("type", "")
    msg = "unknown field" if kind == "extra_forbidden" else str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    raw = tuple(err.get("loc", ()))
    # A tagged union's branch (`inputs.0.chain.where`) is not part of the user's path.
    loc = tuple(
        p for i, p in enumerate(raw) if not (p in _INPUT_TAGS and i and type(raw[i - 1]) is int)
    )
    if not loc and re.match(r"^[a-z_]+(\.[A-Za-z0-9_-]+)*: ", msg):
        return msg  # a whole-document check that names its own path
    return f"{_path(loc)}: {msg}"


def parse_spec_documents(text: str) -> list[pydantic.BaseModel]:
    """Every YAML document of `text`, validated; ValidationError on the first bad one."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise ValidationError(f"spec is larger than {MAX_SPEC_BYTES} bytes")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValidationError(f"spec is not valid YAML{where}") from None
    if not docs:
        raise ValidationError("spec file holds no document")
    out = []
    for i, doc in enumerate(docs):
        out.append(parse_spec(doc, f"document {i + 1}: " if len(docs) > 1 else ""))
    return out


def inline_abi_files(text: str, base: Path) -> str:
    """`trace apply FILE`: each `contracts.NAME.abi_file` (relative to the spec's directory; a
    JSON ABI, or an artifact holding one under `abi`) becomes `abi`, so what is stored and
    sent is self-contained. The text is returned unchanged when nothing names a file."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return text  # parse_spec_documents names the line
    changed = False
    for doc in docs:
        contracts = doc.get("contracts") if isinstance(doc, dict) else None
        if not isinstance(contracts, dict):
            continue
        for name, contract in contracts.items():
            if not isinstance(contract, dict) or not isinstance(contract.get("abi_file"), str):
                continue
            where = f"contracts.{name}.abi_file"
            path = base / contract["abi_file"]
            try:
                loaded = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValidationError(
                    f"{where}: cannot read {path} ({type(exc).__name__})"
                ) from None
            abi = loaded.get("abi") if isinstance(loaded, dict) else loaded
            if not isinstance(abi, list):
                raise ValidationError(
                    f"{where}: {path} holds no JSON ABI (a list, or {{abi: [...]}})"
                )
            contract["abi"] = abi
            del contract["abi_file"]
            changed = True
    return yaml.safe_dump_all(docs, sort_keys=False) if changed else text


def parse_spec(doc: Any, where: str = "") -> pydantic.BaseModel:
    if not isinstance(doc, dict):
        raise ValidationError(f"{where}a spec must be a mapping with a `kind`")
    kind = doc.get("kind")
    model = SPEC_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(SPEC_KINDS))
        raise ValidationError(f"{where}kind: must be one of {known}")
    try:
        return model.model_validate(doc)
    except pydantic.ValidationError as exc:
        raise ValidationError(where + describe(exc)) from None
