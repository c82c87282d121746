"""Text renderings of operation results, for people at a terminal (`--json` prints the
results themselves). One function per result type; nothing here reads or decides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trace_platform.ops.tasks import TASK_STATUSES

if TYPE_CHECKING:  # (types only: a verb imports the operations it runs, not every area's)
    from trace_platform.domain.catalog import RelationInfo
    from trace_platform.ops.alerts import AlertDetail, AlertEvent, AlertSummary, Delivery
    from trace_platform.ops.bundles import BundleSummary
    from trace_platform.ops.dags import DagSnapshotStatus, DagStatus, DagSummary
    from trace_platform.ops.datasets import DatasetDetail, DatasetSummary, QueryAnswer
    from trace_platform.ops.dlq import DlqMessage
    from trace_platform.ops.status import StatusReport
    from trace_platform.ops.tasks import TaskPage
    from trace_platform.ops.users import UserRow


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def status_report(report: StatusReport) -> str:
    lines = ["tasks:"]
    for s in TASK_STATUSES:
        lines.append(f"  {s:<10} {report.tasks.get(s, 0):>10}")
    lines.append("queues:")
    if not report.queues:
        lines.append("  (empty)")
    for qs in report.queues:
        lines.append(
            f"  {qs.queue:<18} depth {qs.depth:>8}  visible {qs.visible:>8}"
            f"  oldest {qs.oldest_age_seconds:>8.1f}s"
        )
    lines.append("outbox:")
    if not report.outbox:
        lines.append("  (empty)")
    for ob in report.outbox:
        lines.append(f"  {ob.status:<10} {ob.n:>10}  oldest {ob.oldest_age_seconds or 0:>8.1f}s")
    if report.alert_events is not None:
        lines.append(f"alert_events rows: {report.alert_events}")
    return "\n".join(lines)


def task_page(page: TaskPage) -> str:
    lines = []
    for t in page.tasks:
        error = f"  {t.last_error[:80]}" if t.last_error else ""
        lines.append(
            f"{t.task_id}  {t.status:<9} {t.attempt}/{t.max_attempts}"
            f"  {t.created_at:%F %T}  {t.operator or t.runtime or ''}{error}"
        )
    if page.next_cursor:
        lines.append(f"more: trace task list --cursor {page.next_cursor}")
    return "\n".join(lines) if lines else "no tasks"


def dlq_messages(items: list[DlqMessage]) -> str:
    if not items:
        return "DLQ is empty"
    return "\n".join(
        f"{m.message_id}  deliveries={m.deliveries}  task={m.task_id}"
        f"  records={m.record_count}  error={m.error}"
        for m in items
    )


def datasets(items: list[DatasetSummary]) -> str:
    if not items:
        return "no datasets (register one with `trace dataset register NAME FILE...`)"
    return "\n".join(
        f"{d.name:<32} {d.kind:<10} {d.dataset_uuid}  {d.current_version or '-'}"
        f"  {d.created_at:%F %T}"
        for d in items
    )


def dataset_detail(d: DatasetDetail) -> str:
    lines = [f"{d.name}  {d.kind}  {d.dataset_uuid}  current {d.current_version or '-'}"]
    for r in d.ranges or []:
        lines.append(
            f"  [{r.range_start}, {r.range_end})  {r.row_count} rows  {r.size_bytes} B"
            f"  commit {r.added_seq}{'  compacted' if r.compacted else ''}"
        )
    for v in d.versions or []:
        lines.append(f"  {v.dataset_version}  {v.files} file(s)  {v.created_at:%F %T}")
    return "\n".join(lines)


def bundles(items: list[BundleSummary]) -> str:
    if not items:
        return "no bundles (upload one with `trace bundle upload ZIP ...`)"
    return "\n".join(
        f"{b.bundle_id}  {b.language:<6} {b.entrypoint:<24} {b.size_bytes:>9} B"
        f"  sha256 {b.sha256[:16]}…  {b.created_at:%F %T}"
        for b in items
    )


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def query_table(result: QueryAnswer) -> str:
    names = [c["name"] for c in result.columns]
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def relations(found: list[RelationInfo]) -> str:
    if not found:
        return "no relations yet (sync a chain or `trace dataset register`)"
    lines = []
    for r in found:
        lines.append(f"{r.name}  ({r.kind})  names: {', '.join(r.names)}")
        cols = ", ".join(f"{c['name']} {c['type']}" for c in r.columns) or "(no files yet)"
        lines.append(f"    {cols}")
    return "\n".join(lines)


def query_footer(result: QueryAnswer) -> str:
    more = " (truncated: raise --limit)" if result.truncated else ""
    return f"({plural(len(result.rows), 'row')}){more}"


def chain_status(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no chain jobs (apply a kind: chain_sync spec with `trace apply FILE`)"
    lines = []
    for j in jobs:
        state = j["state"]
        head = "?" if j["head"] is None else str(j["head"])
        age = "" if j["head_age_seconds"] is None else f" ({j['head_age_seconds']:g} s ago)"
        lines.append(
            f"{j['name']}  chain {j['chain_id']}  {j['mode']}  head {head}{age}  {state}"
            f"  reorgs {j['reorgs']}"
        )
        if j["error"]:
            lines.append(f"  error: {j['error']}")
        if j["last_reorg"]:
            r = j["last_reorg"]
            lines.append(
                f"  last reorg: from block {r.get('fork_block')} (depth {r.get('depth')}),"
                f" replaced {sum(r.get('replaced_ranges', {}).values())} range(s)"
            )
        if j.get("endpoints"):
            lines.append(f"  rpc pool {j['rpc_pool']}:")
        for e in j.get("endpoints", []):
            rate = "unmetered" if e["rps"] is None else f"{e['rps']:g} req/s"
            p50 = "" if e["latency_p50_ms"] is None else f"  p50 {e['latency_p50_ms']:g} ms"
            lag = f"  lag {e['lag']}" if e.get("lag") else ""
            lines.append(
                f"    {e['endpoint']:<14} {e['state']:<9} {rate:<14} requests {e['requests']:<7}"
                f" 429s {e['throttled']:<5} errors {e['errors']:<5} ranges {e['ranges']:<5}"
                f"{p50}{lag}"
            )
            if e.get("reason") and e["state"] != "healthy":
                lines.append(f"      {e['reason']}")
        raw = [s for s in j["streams"] if not s.get("decoded")]
        decoded = [s for s in j["streams"] if s.get("decoded")]
        for s in raw + decoded:
            if decoded and s is decoded[0]:
                lines.append("  decoded tables (from stored logs), per contract:")
            lag = "" if s["lag_blocks"] is None else f"  lag {s['lag_blocks']} blocks"
            if s["lag_seconds"] is not None and s["lag_blocks"]:
                lag += f" / {s['lag_seconds']:g} s"
            done = "  complete" if s["complete"] else ""
            lines.append(
                f"  {s['stream']:<18} {s['status']:<8} tip {s['tip']:<10} cursor {s['cursor']:<10}"
                f" in flight {s['in_flight']:<3} committed {s['committed']:<6}"
                f" failed {s['failed']:<3} {s['blocks_per_second']:g} blocks/s{lag}{done}"
            )
            if s.get("decoded"):
                d = s["decoded"]
                bad = s["undecodable_logs"]
                note = f"  ({bad} undecodable log(s): does the ABI match?)" if bad else ""
                lines.append(f"    {d['contract']}: {d['signature']}{note}")
            if s["last_error"]:
                lines.append(f"    last error: {s['last_error']}")
    return "\n".join(lines)


def alerts(items: list[AlertSummary]) -> str:
    if not items:
        return "no alerts (apply a kind: alert spec with `trace apply FILE`)"
    return "\n".join(
        f"{a.name:<24} {a.dataset:<32} {a.spec['severity']:<8} from block"
        f" {a.start_block:<8} {'enabled' if a.enabled else 'disabled'}"
        for a in items
    )


def alert_events(items: list[AlertEvent]) -> str:
    return "\n".join(f"block {e.block_number:<8} {e.tx_hash}  {e.event_time:%F %T}" for e in items)


def alert_detail(info: AlertDetail) -> str:
    spec = info.spec
    rule = spec["rule"]
    lines = [
        f"alert {info.name} ({'enabled' if info.enabled else 'disabled'})",
        f"  source     {spec['source']['dataset']} from block {info.start_block}",
        (
            f"  rule       sql: {' '.join(rule['sql'].split())[:200]}"
            if rule.get("sql")
            else f"  rule       udf: bundle {rule['udf']['bundle_id']}"
        ),
        f"  identity   {', '.join(spec['identity'])}   severity {spec['severity']}",
    ]
    for i, ch in enumerate(spec.get("channels", [])):
        secret = f"  signed with ${ch['secret_env']}" if ch.get("secret_env") else ""
        lines.append(f"  channel {i}  {ch['type']} {ch['url']}{secret}")
    ev = ", ".join(f"{k} {v}" for k, v in sorted(info.evaluations.items())) or "none"
    dv = ", ".join(f"{k} {v}" for k, v in sorted(info.deliveries.items())) or "none"
    lines += [f"  evaluations {ev}", f"  events     {info.events}", f"  deliveries {dv}"]
    return "\n".join(lines)


def deliveries(items: list[Delivery]) -> str:
    lines = []
    for r in items:
        code = r.last_status_code if r.last_status_code is not None else "-"
        lines.append(
            f"{r.delivery_id}  ch{r.channel} {r.status:<9} attempts"
            f" {r.attempts}/{r.max_attempts}  last {code}  block {r.block_number}"
            + (f"  {r.last_error}" if r.last_error else "")
        )
        for a in r.attempt_log:
            lines.append(
                f"    #{a.attempt} {a.started_at:%F %T} {a.outcome:<9}"
                f" {a.status_code if a.status_code is not None else '-'}"
                f" {a.duration_ms} ms" + (f"  {a.error}" if a.error else "")
            )
    return "\n".join(lines)


def users(items: list[UserRow]) -> str:
    if not items:
        return "no users (create one with `trace user create NAME --role admin`)"
    return "\n".join(
        f"{u.name:<24} {u.role:<7} {u.key_prefix}…  "
        + (f"revoked {u.revoked_at:%F %T}" if u.revoked_at else "active")
        for u in items
    )


def _columns(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    return [
        indent + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def progress_bar(done: int, total: int | None, width: int = 10) -> str:
    """`[#####.....] 50%` of `total`; `[----------] -` when there is nothing to do yet."""
    if not total or total <= 0:
        return f"[{'-' * width}] -"
    share = min(max(done, 0) / total, 1.0)
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {int(share * 100)}%"


def dags(items: list[DagSummary]) -> str:
    if not items:
        return "no DAGs (apply a kind: dag spec with `trace apply FILE`)"
    header = ["name", "state", "jobs", "committed", "in flight", "failed", "updated"]
    rows = [
        [
            d.name,
            d.state,
            str(d.jobs) + (f" ({d.stopped_jobs} stopped)" if d.stopped_jobs else ""),
            str(d.committed),
            str(d.in_flight),
            str(d.failed),
            f"{d.updated_at:%F %T}",
        ]
        for d in items
    ]
    return "\n".join(_columns(header, rows))


def snapshot_line(s: DagSnapshotStatus) -> str:
    """A whole-snapshot job's refresh: version, last run, schedule, next slot, missed."""
    when = "on change" if s.schedule is None else f"schedule {s.schedule!r} (UTC)"
    last = "never" if s.last_run_at is None else s.last_run_at.isoformat(timespec="seconds")
    line = f"whole snapshot, {when}: version {s.version}, {s.runs} runs, last run {last}"
    if s.next_slot is not None:
        line += f", next slot {s.next_slot.isoformat(timespec='seconds')}"
    if s.missed_slots:
        line += f", missed {s.missed_slots} slots"
        if s.last_missed and s.last_slot is not None:
            line += f" ({s.last_missed} before {s.last_slot.isoformat(timespec='seconds')})"
    return line


def dag_generations(status: DagStatus) -> list[str]:
    """The current generation, the one being built (its jobs' progress) and those kept."""
    kept = [str(g.generation) for g in status.generations if g.state == "retired"]
    out = [
        f"generation {status.generation} current"
        + (f"; kept for rollback: {', '.join(kept)}" if kept else "")
    ]
    for g in status.generations:
        if g.state != "building":
            continue
        done = ", ".join(
            f"{j.job} {j.committed_to}/{j.target}{' ready' if j.ready else ''}" for j in g.jobs
        )
        pct = f"{(g.progress or 0) * 100:.0f}%"
        out.append(f"generation {g.generation} building  {pct}  {done}")
        out += [
            f"  {j.job} stopped: {j.last_error or 'its ranges failed'} (fix the spec and"
            " apply again, or roll back)"
            for j in g.jobs
            if j.status == "stopped"
        ]
    return out


def dag_status(status: DagStatus) -> str:
    """One row per job (progress from its first block to its inputs' committed tip), then
    each job's inputs and last error."""
    lines = [f"dag {status.name}  {status.state}  {plural(len(status.jobs), 'job')}"]
    lines += dag_generations(status)
    header = [
        "job",
        "status",
        "progress",
        "committed",
        "in flight",
        "failed",
        "rows",
        "committed to",
        "input tip",
        "lag",
        "generation",
    ]
    rows = []
    for j in status.jobs:
        total = None if j.input_tip is None else j.input_tip - j.from_block
        rows.append(
            [
                j.job,
                j.status,
                progress_bar(j.committed_to - j.from_block, total),
                str(j.committed),
                str(j.in_flight),
                str(j.failed),
                str(j.rows),
                str(j.committed_to),
                "-" if j.input_tip is None else str(j.input_tip),
                "-" if j.lag_blocks is None else f"{j.lag_blocks} blocks",
                j.generation[:12],
            ]
        )
    lines += _columns(header, rows, "  ")
    for j in status.jobs:
        inputs = ", ".join(
            f"{i.kind} {i.name}" + (f" where {i.where}" if i.where else "") for i in j.inputs
        )
        lines.append(f"  {j.job} ({j.relation}) reads {inputs}")
        if j.udf is not None:
            columns = ", ".join(f"{c} {t}" for c, t in j.udf.schema.items())
            lines.append(
                f"    udf: {j.udf.language} bundle {j.udf.bundle_id} (sha256"
                f" {j.udf.sha256[:12]}), rows checked against {{{columns}}}"
                + (f", unique_key {j.udf.unique_key}" if j.udf.unique_key else "")
            )
        if j.snapshot is not None:
            lines.append(f"    {snapshot_line(j.snapshot)}")
        if j.last_error:
            lines.append(f"    last error: {j.last_error}")
    return "\n".join(lines)
