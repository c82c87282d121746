"""Helpers importable by Python handlers: `from trace_udf import FatalError`."""


class FatalError(Exception):
    """Raise to fail the task for good (no retry): bad input, a rule that cannot pass."""


class QueryError(Exception):
    """The query service refused or failed a `context.query` call."""
