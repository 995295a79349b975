"""Issue 20 item 1: the partitioned run (`bench.run --partitions P`).

At N, the plain template's rows are copied into the reference table hash-partitioned by
company_id into P leaves (`handler.schema.hash_partitions`): the plain template is cloned, its
table renamed, the partitioned table created beside it and filled by one INSERT ... SELECT (the
same rows, in the same heap order, routed to the leaves), its indexes rebuilt, VACUUM (FREEZE,
ANALYZE) as the plain template gets. `fingerprint` proves it is the same data (rows, old rows
and a hash of every key's identity and age, per key type) or the run stops.

The variants `single-part` and `ours-part` run on fresh copies of it beside the same writer as
their plain counterparts, right after them. Without the writer, `exactness` runs the engine on
a fresh plain copy and a fresh partitioned copy one after the other and compares what is left:
per key type, the rows and a hash of their identities. The two runs read the database clock a
few seconds apart, so the rows whose age lies between the two cutoffs are left out of the
comparison and counted (`window_rows`). A leaf skipped, or any row deleted or kept differently,
changes the hash of its key type. `lock_cost` times the statements each batch adds on a
partitioned table: the parent's lock (which LOCK TABLE takes on every leaf too) and the
leaf-list check.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from bench.common import RETENTION_DAYS, Conn, admin, db_url, drop_database, median
from bench.data import SMALL_DATABASE_BYTES, Template, _drop_indexes, fresh_copy, rebuild_indexes
from bench.variants import engine_settings
from handler import db
from handler.cleanup import run_cleanup
from handler.schema import REFERENCE_TABLE, hash_partitions
from handler.settings import Flags

SUFFIX = "-part"
VARIANTS = ("single", "ours")
THROUGHPUT_FACTOR = 1.2  # partitioned rows/s >= unpartitioned rows/s / 1.2 (issue 20)
SOURCE = f"{REFERENCE_TABLE}_source"

# key_type -> (rows, rows older than the cutoff, sum of the rows' identity hashes)
Fingerprint = dict[str, tuple[int, int, int]]


def is_part(variant: str) -> bool:
    return variant.endswith(SUFFIX)


def base(variant: str) -> str:
    """The plain variant a partitioned one runs (`ours-part` -> `ours`)."""
    return variant.removesuffix(SUFFIX)


def with_partitioned(cases: list[Any], partitions: int, make: Any) -> list[Any]:
    """The cases with, after each index state's plain cases, the same variants on the
    partitioned copy (`make(variant, index)` builds one): plain and partitioned measured
    minutes apart at most."""
    if not partitions:
        return cases
    out: list[Any] = []
    for index in dict.fromkeys(c.index for c in cases):
        group = [c for c in cases if c.index == index]
        out += group + [make(c.variant + SUFFIX, index) for c in group if c.variant in VARIANTS]
    return out + [c for c in cases if c not in out]


def build_template(base_url: str, plain: Template, name: str, partitions: int) -> Template:
    """Database `name`: the rows of template `plain` in the reference table hash-partitioned
    by company_id into `partitions` leaves. Raises if its fingerprint differs from plain's."""
    drop_database(base_url, name)
    with admin(base_url) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (plain.name,)).fetchone()
        strategy = "FILE_COPY" if row and int(str(row[0])) > SMALL_DATABASE_BYTES else "WAL_LOG"
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY = {}").format(
                sql.Identifier(name), sql.Identifier(plain.name), sql.SQL(strategy)
            )
        )
    started = time.monotonic()
    table, source = sql.Identifier(REFERENCE_TABLE), sql.Identifier(SOURCE)
    columns = sql.SQL("company_id, key_type, key_id, value, created_at, updated_at, expires_at")
    with psycopg.connect(db_url(base_url, name), autocommit=True) as conn:
        _drop_indexes(conn)  # the source's: their names are the new table's
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table, source))
        conn.execute(
            sql.SQL("DROP FUNCTION {}() CASCADE").format(sql.Identifier(f"{REFERENCE_TABLE}_touch"))
        )
        conn.execute(hash_partitions(REFERENCE_TABLE, partitions))
        pkey, indexes = _drop_indexes(conn)
        conn.execute(
            sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s}").format(
                t=table, c=columns, s=source
            )
        )
        conn.execute(sql.SQL("DROP TABLE {}").format(source))
        rebuild_indexes(conn, pkey, indexes)
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(table))
        sizes = conn.execute(
            "SELECT coalesce(sum(pg_table_size(relid)), 0), "
            "coalesce(sum(pg_total_relation_size(relid)), 0) "
            "FROM pg_partition_tree(%s::regclass) WHERE isleaf",
            (REFERENCE_TABLE,),
        ).fetchone() or (0, 0)
    seed_s = time.monotonic() - started
    same, plain_fp, part_fp = same_data(base_url, plain.name, name)
    if not same:
        raise RuntimeError(
            "the partitioned template differs from the plain one in key types "
            + ", ".join(compare(plain_fp, part_fp))
        )
    return Template(
        name=name,
        rows=sum(v[0] for v in part_fp.values()),
        old_rows=sum(v[1] for v in part_fp.values()),
        table_bytes=int(str(sizes[0])),
        total_bytes=int(str(sizes[1])),
        seed_s=seed_s,
    )


def same_data(base_url: str, plain: str, partitioned: str) -> tuple[bool, Fingerprint, Fingerprint]:
    """The two databases' key tables compared at one cutoff instant."""
    with admin(base_url) as conn:
        row = conn.execute("SELECT now() - make_interval(days => %s)", (RETENTION_DAYS,)).fetchone()
    cutoff = row[0] if row and isinstance(row[0], datetime) else datetime.now().astimezone()
    fps = []
    for name in (plain, partitioned):
        with psycopg.connect(db_url(base_url, name)) as conn:
            fps.append(fingerprint(conn, cutoff=cutoff))
    return fps[0] == fps[1], fps[0], fps[1]


def fingerprint(
    conn: Conn,
    table: str = REFERENCE_TABLE,
    *,
    cutoff: datetime,
    exclude: tuple[datetime, datetime] | None = None,
) -> Fingerprint:
    """Per key type: rows, rows older than `cutoff`, and the sum of a 64-bit md5 of each row's
    (company_id, key_type, key_id, updated_at), order-free; rows whose updated_at lies in
    [exclude[0], exclude[1]) are left out."""
    where: sql.Composable = sql.SQL("")
    params: dict[str, Any] = {"cutoff": cutoff}
    if exclude is not None:
        where = sql.SQL(
            "WHERE NOT (updated_at >= %(lo)s AND updated_at < %(hi)s) AND NOT {}"
        ).format(order_dependent(table))
        params |= {"lo": exclude[0], "hi": exclude[1]}
    rows = conn.execute(
        sql.SQL(
            """
SELECT key_type, count(*), count(*) FILTER (WHERE updated_at < %(cutoff)s),
       coalesce(sum(('x' || substr(md5(concat_ws('|', company_id, key_type, key_id,
         to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'))), 1, 16))
         ::bit(64)::bigint::numeric), 0)
FROM {t} {where} GROUP BY key_type
"""
        ).format(t=sql.Identifier(table), where=where),
        params,
    ).fetchall()
    return {str(r[0]): (int(str(r[1])), int(str(r[2])), int(str(r[3]))) for r in rows}


def order_dependent(table: str = REFERENCE_TABLE) -> sql.Composable:
    """TRUE for an old sender key whose group's sender-key-memory row is gone after the run.

    The key lifecycle keeps a sender key while that row is there (handler/db/predicates.py,
    own_sender_key); when the memory row is itself deleted in the same run, the sender key
    goes if a later batch reaches it, and stays (until the next run) if it came in the same
    batch or an earlier one. Which of the two depends on where the batch boundaries fall, and
    they fall elsewhere in a leaf than in the plain table: such rows are left out of the
    comparison (and counted apart), every other row must match."""
    return sql.SQL(
        "(key_type = 'sender-key' AND updated_at < %(lo)s AND NOT EXISTS (SELECT 1 FROM {t} m "
        "WHERE m.company_id = {t}.company_id AND m.key_type = 'sender-key-memory' "
        "AND m.key_id = split_part({t}.key_id, '::', 1)))"
    ).format(t=sql.Identifier(table))


def count_order_dependent(conn: Conn, before: datetime) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(REFERENCE_TABLE), order_dependent()
        ),
        {"lo": before},
    ).fetchone()
    return int(str(row[0])) if row else 0


def compare(plain: Fingerprint, part: Fingerprint) -> list[str]:
    """The key types whose rows or identity hash differ (empty: the same rows)."""
    return sorted(
        t for t in plain.keys() | part.keys() if plain.get(t, (0, 0, 0)) != part.get(t, (0, 0, 0))
    )


def exactness(
    base_url: str, plain: str, partitioned: str, prefix: str, batch_size: int | None
) -> dict[str, Any]:
    """The engine on a fresh plain copy and a fresh partitioned copy, no writer: what each
    deleted, per key type, and whether the rows left are the same (see the module's doc)."""
    runs: dict[str, dict[str, Any]] = {}
    fps: dict[str, Fingerprint] = {}
    cutoffs: dict[str, datetime] = {}
    with (
        fresh_copy(base_url, plain, f"{prefix}_exact_plain", timestamp_index=False) as plain_url,
        fresh_copy(
            base_url, partitioned, f"{prefix}_exact_part", timestamp_index=False
        ) as part_url,
    ):
        urls = {"plain": plain_url, "partitioned": part_url}
        before: dict[str, Fingerprint] = {}
        for label, url in urls.items():
            with psycopg.connect(url) as conn:
                before[label] = fingerprint(conn, cutoff=datetime.now().astimezone())
        for label, url in urls.items():
            # As before each timed variant: the second run must not pay the first one's WAL
            # (the engine paces by the WAL written since the last checkpoint).
            with admin(base_url) as conn:
                conn.execute("CHECKPOINT")
            started = time.monotonic()
            report = run_cleanup(engine_settings(url, batch_size), Flags(dry_run=False, force=True))
            if report.cutoff is None:
                raise RuntimeError("the engine reported no cutoff")
            cutoffs[label] = report.cutoff
            runs[label] = {
                "status": report.status,
                "reason": report.reason,
                "deleted": report.deleted,
                "batches": report.batches,
                "wall_s": round(time.monotonic() - started, 3),
                "pacing_wait_ms": report.pacing_wait_ms,
                "cutoff": report.cutoff.isoformat(),
            }
        window = (min(cutoffs.values()), max(cutoffs.values()))
        for label, url in urls.items():
            with psycopg.connect(url) as conn:
                after = fingerprint(conn, cutoff=window[0])
                fps[label] = fingerprint(conn, cutoff=window[0], exclude=window)
                runs[label]["deleted_by_type"] = {
                    t: before[label][t][0] - after.get(t, (0, 0, 0))[0] for t in before[label]
                }
                runs[label]["left_old_by_type"] = {t: v[1] for t, v in after.items()}
                runs[label]["order_dependent_left"] = count_order_dependent(conn, window[0])
        with psycopg.connect(plain_url) as conn:
            window_rows = int(
                str(
                    (
                        conn.execute(
                            sql.SQL(
                                "SELECT count(*) FROM {} WHERE updated_at >= %s AND updated_at < %s"
                            ).format(sql.Identifier(REFERENCE_TABLE)),
                            window,
                        ).fetchone()
                        or (0,)
                    )[0]
                )
            )
        costs = {label: lock_cost(url) for label, url in urls.items()}
    differ = compare(fps["plain"], fps["partitioned"])
    completed = all(r["status"] == "completed" for r in runs.values())
    return {
        "exact": completed and not differ and runs["partitioned"]["deleted"] > 0,
        "differing_key_types": differ,
        "window_rows": window_rows,
        "cutoff_window_s": round((window[1] - window[0]).total_seconds(), 3),
        "same_source": before["plain"] == before["partitioned"],
        "runs": runs,
        "lock_cost": costs,
    }


def lock_cost(url: str, repeats: int = 200) -> dict[str, Any]:
    """Median ms of the statements a batch runs before its DELETE, each in a transaction of
    its own: the SET LOCALs alone (the floor), and with the table lock (a partitioned table's
    parent: every leaf is locked too, and the same round trip reads the leaf list the batch
    checks)."""
    with psycopg.connect(url, autocommit=True) as conn:
        target = db.resolve_target(conn, None, REFERENCE_TABLE, "updated_at", "key_type")

        def settings() -> None:
            db.set_local(conn, synchronous_commit="off", lock_timeout="5000ms")

        def lock() -> None:
            settings()
            db.lock_for_delete_then_row_wait(conn, target, row_wait_ms=1000)

        steps = {"settings": settings, "lock": lock}
        timings: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(repeats):  # alternated, so drift hits every step alike
            for name, step in steps.items():
                t0 = time.perf_counter()
                with conn.transaction():
                    step()
                timings[name].append((time.perf_counter() - t0) * 1000)
    return {
        "partitioned": target.partitioned,
        **{k: round(median(v), 3) for k, v in timings.items()},
    }


# --- the report's section ----------------------------------------------------------------------


def render(result: dict[str, Any]) -> list[str]:
    """The partitioned section of the Markdown: the cases side by side, exactness, lock cost."""
    part = result.get("partitioned")
    if not part:
        return []
    n = int(result["meta"]["settings"]["rows"])
    summary = {(s["variant"], bool(s["index"])): s for s in result["summary"] if s["size"] == n}
    lines = [
        "",
        f"## Partitioned ({part['partitions']} hash partitions by company_id, issue 20)",
        "",
        f"The same rows as the plain table (fingerprint checked: {part['template_check']}), "
        f"copied in {part['template_s']:.1f} s. Ratios: partitioned over unpartitioned, "
        "medians.",
        "",
        "| variant | ts index | wall s (plain) | rows/s ratio, whole run | rows/s ratio, delete "
        "loop | txns (plain) | writer max ms (plain) | writer p99 ms (plain) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (variant, index), s in summary.items():
        if not is_part(variant) or (base(variant), index) not in summary:
            continue
        b = summary[(base(variant), index)]
        lines.append(
            f"| {variant} | {'yes' if index else 'no'} | {s['wall_s']:.2f} ({b['wall_s']:.2f}) | "
            f"{_ratio(s['rows_per_s'], b['rows_per_s'])} | "
            f"{_ratio(s['delete_rows_per_s'], b['delete_rows_per_s'])} | "
            f"{s['transactions']} ({b['transactions']}) | "
            f"{s['writer_max_ms']:.0f} ({b['writer_max_ms']:.0f}) | "
            f"{s['writer_p99_ms']:.1f} ({b['writer_p99_ms']:.1f}) |"
        )
    ex = part.get("exactness")
    if ex:
        lines += ["", *_exactness_lines(ex)]
    return lines


def _ratio(a: Any, b: Any) -> str:
    return f"{float(a) / float(b):.2f}x" if a and b else "-"


def _exactness_lines(ex: dict[str, Any]) -> Iterable[str]:
    runs = ex["runs"]
    yield (
        f"Exactness (no writer, fresh copies, one engine run each): "
        f"**{'exact' if ex['exact'] else 'NOT exact'}**; deleted {runs['plain']['deleted']:,} "
        f"(plain) and {runs['partitioned']['deleted']:,} (partitioned); the rows left compared "
        f"per key type by count and identity hash, the {ex['window_rows']} row(s) between the "
        f"two runs' cutoffs ({ex['cutoff_window_s']} s apart) left out, and so are the old "
        "sender keys whose group's memory row went in the same run (kept or not by where the "
        "batch boundaries fall: "
        f"{runs['plain'].get('order_dependent_left', '?')} left in the plain table, "
        f"{runs['partitioned'].get('order_dependent_left', '?')} in the partitioned one)"
        + (
            f"; differing key types: {', '.join(ex['differing_key_types'])}"
            if ex["differing_key_types"]
            else ""
        )
        + f". Batches: {runs['plain']['batches']} (plain), {runs['partitioned']['batches']} "
        f"(partitioned); engine run {runs['plain']['wall_s']:.2f} s and "
        f"{runs['partitioned']['wall_s']:.2f} s."
    )
    costs = ex.get("lock_cost") or {}
    if costs:
        p, q = costs.get("plain", {}), costs.get("partitioned", {})
        yield ""
        yield (
            "Per-batch statements before the DELETE, median ms (a transaction each): "
            f"settings {p.get('settings')} / {q.get('settings')}, with the table lock "
            f"{p.get('lock')} / {q.get('lock')} (plain / partitioned: the parent's lock takes "
            "every leaf's"
            + (
                f"), with the leaf-list check {q['lock_and_leaf_check']} (partitioned)."
                if "lock_and_leaf_check" in q  # results of before 2026-12-07: two round trips
                else ", and reads the leaf list in the same round trip)."
            )
        )
