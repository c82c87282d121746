"""Prometheus metrics shared by every process (each process exposes its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

TASK_TRANSITIONS = Counter(
    "trace_task_transitions_total",
    "Task state transitions by kind.",
    ["transition"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "trace_http_requests_total",
    "HTTP requests by route and status.",
    ["route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "trace_http_request_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
OUTBOX_PUBLISHED = Counter(
    "trace_outbox_published_total",
    "Outbox rows published to queues, by topic.",
    ["topic"],
    registry=REGISTRY,
)
OUTBOX_FAILURES = Counter(
    "trace_outbox_failures_total", "Outbox publish failures.", registry=REGISTRY
)
LOOP_ITERATIONS = Counter(
    "trace_loop_iterations_total", "Background loop iterations.", ["loop"], registry=REGISTRY
)
WORKER_TASKS = Counter(
    "trace_worker_tasks_total",
    "Tasks run by the worker, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
SINK_BATCHES = Counter(
    "trace_sink_batches_total",
    "Buffer batches handled by the sink, by result.",
    ["result"],
    registry=REGISTRY,
)
SINK_ROWS = Counter(
    "trace_sink_rows_total", "Rows handled by the sink, by result.", ["result"], registry=REGISTRY
)
QUERIES = Counter(
    "trace_queries_total",
    "Queries answered by the query service, by outcome (allowed, or the denial/failure code).",
    ["outcome"],
    registry=REGISTRY,
)
QUERY_EXECUTOR_STARTS = Counter(
    "trace_query_executor_starts_total",
    "Query executor processes started, by route (reader, arrow) and result.",
    ["route", "result"],
    registry=REGISTRY,
)
QUERY_SECONDS = Histogram(
    "trace_query_seconds",
    "Time from a gated query's hand-off to its executor until the reply (starts included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
QUERY_EXECUTORS = Gauge(
    "trace_query_executors", "Live query executor processes.", registry=REGISTRY
)
IN_FLIGHT = Gauge("trace_in_flight", "Work items in flight in this process.", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)


CHAIN_RANGES = Counter(
    "trace_chain_ranges_total",
    "Chain ranges by transition (scheduled, committed, rejected, failed, replaced).",
    ["transition"],
    registry=REGISTRY,
)
CHAIN_REORGS = Counter(
    "trace_chain_reorgs_total", "Reorgs detected on synced chains.", registry=REGISTRY
)
CHAIN_HEAD = Gauge(
    "trace_chain_head", "Last head block seen per chain job.", ["job"], registry=REGISTRY
)
RPC_CALLS = Counter(
    "trace_rpc_calls_total",
    "RPC calls this process made per pool endpoint (by label) and outcome (ok, throttled, error).",
    ["pool", "endpoint", "outcome"],
    registry=REGISTRY,
)
RPC_ENDPOINT = Gauge(
    "trace_rpc_endpoint",
    "Per pool endpoint (by label), summed over processes: requests, throttled, errors, ranges,"
    " rps (current budget; -1 unmetered), latency_p50_seconds, and state_<state> (1 or 0).",
    ["pool", "endpoint", "field"],
    registry=REGISTRY,
)
CHAIN_COMPACTIONS = Counter(
    "trace_chain_compactions_total", "Partitions merged by compaction.", registry=REGISTRY
)
DELIVERIES = Counter(
    "trace_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed).",
    ["outcome"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "trace_delivery_seconds",
    "Time of one webhook delivery attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
