"""Connect, resolve the target and auth tables in the catalog, lock, and read the clock."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow, class_row, dict_row

from handler.domain import AuthTable, Encoded, Leaf, Relation, Target
from handler.errors import DatabaseError, TargetNotFound, TargetTypeError

Conn = psycopg.Connection[TupleRow]

MIN_SERVER_VERSION = 140000  # TID Range Scan (ctid >= x AND ctid < y) arrived in PostgreSQL 14
TIMESTAMPTZ = "timestamp with time zone"
TIMESTAMP = "timestamp without time zone"
TIMESTAMP_TYPES = frozenset({TIMESTAMPTZ, TIMESTAMP})
# Advisory lock key: a fixed high word ("kc") so our locks don't collide with the
# application's, and the table's OID as the low word, so each target table has its own lock.
LOCK_CLASS = 0x6B63 << 32


def fetch_one[Row](cur: psycopg.Cursor[Row]) -> Row:
    """The one row of an aggregate or scalar SELECT."""
    row = cur.fetchone()
    if row is None:  # pragma: no cover - aggregates and scalar SELECTs always return a row
        raise DatabaseError("the query returned no row")
    return row


def redact(message: str, dsn: str | None) -> str:
    """Remove the DSN and its password from a driver message (libpq may echo parts of it)."""
    if dsn:
        message = message.replace(dsn, "[database url]")
        try:
            password = conninfo_to_dict(dsn).get("password")
        except psycopg.Error:
            password = None
        if password:
            message = message.replace(str(password), "***")
    # A URL with credentials that slipped through in another spelling.
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", message)


def connect(dsn: str, *, connect_timeout_s: int) -> Conn:
    """Open an autocommit connection. Errors come back as DatabaseError without secrets."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's parse error quotes the token it stopped at: maybe the password.
        raise DatabaseError(
            "could not connect to the database: its URL cannot be parsed (a raw % in a URL, "
            "an unquoted space in a key=value string?)"
        ) from None
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout_s,
            application_name="keys-cleanup",
        )
    except psycopg.Error as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DatabaseError(f"could not connect to the database: {redact(detail, dsn)}") from None
    # Reports read the same whatever the server's default zone, and `now() - interval` is
    # exactly N x 24 hours: UTC has no daylight-saving shifts.
    conn.execute("SET TimeZone = 'UTC'")
    # No JIT: the measuring pass is one scan whose plan cost passes jit_optimize_above_cost at
    # 300k rows, and compiling it took 0.3-0.5 s with the key lifecycle's expressions, more
    # than the whole scan; without it the pass ran faster at 1M rows with the old rules too
    # (bench/results/rules-1000000.md).
    conn.execute("SET jit = off")
    # The job's own writes (the run history) never wait for a synchronous standby: a commit
    # waiting for one that is gone is bounded by no timeout (docs/pacing.md). The batches set
    # it per transaction as well; the WAL is flushed locally all the same.
    conn.execute("SET synchronous_commit = local")
    return conn


def set_timeouts(conn: Conn, *, statement_ms: int, lock_ms: int, local: bool = False) -> None:
    scope = sql.SQL("LOCAL ") if local else sql.SQL("")
    conn.execute(
        sql.SQL("SET {}statement_timeout = {}").format(
            scope, sql.Literal(f"{max(1, statement_ms)}ms")
        )
    )
    conn.execute(
        sql.SQL("SET {}lock_timeout = {}").format(scope, sql.Literal(f"{max(1, lock_ms)}ms"))
    )


def set_local(conn: Conn, **settings: str) -> None:
    """SET LOCAL several settings in one statement (inside a transaction)."""
    conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings.items()
            )
        )
    )


def server_version(conn: Conn) -> int:
    return conn.info.server_version


def table_columns(conn: Conn, oid: int) -> dict[str, str]:
    """A relation's live columns: name -> type as format_type spells it."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    return {r["attname"]: r["type"] for r in rows}


def find_relation(
    conn: Conn,
    schema: str | None,
    name: str,
    *,
    implicit_schemas: bool = True,
    relkinds: tuple[str, ...] | None = None,
) -> Relation | None:
    """The relation `name` resolves to, as PostgreSQL resolves it (search path order, with
    pg_catalog first unless `implicit_schemas` is off), among `relkinds` when given, or None."""
    with conn.cursor(row_factory=class_row(Relation)) as cur:
        return cur.execute(
            """
            SELECT c.oid::bigint AS oid, n.nspname::text AS schema, c.relname::text AS name,
                   c.relkind::text AS relkind
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relname = %(name)s
              AND (%(relkinds)s::text[] IS NULL OR c.relkind::text = ANY (%(relkinds)s::text[]))
              AND CASE WHEN %(schema)s::text IS NULL
                       THEN n.nspname = ANY (current_schemas(%(implicit)s))
                       ELSE n.nspname = %(schema)s END
            ORDER BY array_position(current_schemas(%(implicit)s), n.nspname::text)
            LIMIT 1
            """,
            {
                "schema": schema,
                "name": name,
                "implicit": implicit_schemas,
                "relkinds": list(relkinds) if relkinds is not None else None,
            },
        ).fetchone()


def _primary_key(conn: Conn, oid: int) -> tuple[str, ...]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT a.attname
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary
            ORDER BY k.ord
            """,
            (oid,),
        ).fetchall()
    return tuple(r["attname"] for r in rows)


def _cleanable_relation(conn: Conn, schema: str | None, name: str) -> Relation:
    """The relation `name` resolves to, when it is an ordinary table outside the system
    schemas; else TargetNotFound."""
    rel = find_relation(conn, schema, name)
    if rel is None:
        shown = f"{schema}.{name}" if schema else name
        raise TargetNotFound(f"table {shown} does not exist (or is not visible to this role)")
    if rel.schema in {"pg_catalog", "information_schema"} or rel.schema.startswith("pg_"):
        raise TargetNotFound(f"refusing {rel.schema}.{rel.name}: it is a system table")
    if rel.relkind not in {"r", "p"}:
        raise TargetNotFound(
            f"{rel.schema}.{rel.name} is not an ordinary table (relkind {rel.relkind}), "
            "nor a partitioned one"
        )
    _refuse_a_partition(conn, rel)
    if rel.relkind == "p":
        _check_leaves(conn, rel)
    return rel


def _refuse_a_partition(conn: Conn, rel: Relation) -> None:
    """A partition is not a target of its own: its lookups (memory rows, creds) would read it
    alone, where the rows they look for may sit in another partition, and a run on the whole
    table would not exclude it (the advisory lock is per table)."""
    row = conn.execute(
        """
        SELECT format('%%I.%%I', n.nspname, r.relname)
        FROM pg_class c
        JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
        JOIN pg_namespace n ON n.oid = r.relnamespace
        WHERE c.oid = %s AND c.relispartition
        """,
        (rel.oid,),
    ).fetchone()
    if row is not None:
        raise TargetTypeError(
            f"refusing {rel.schema}.{rel.name}: it is a partition of {row[0]}; name that table "
            "in CLEANUP_TABLE (a run deletes from all its partitions)"
        )


def _check_leaves(conn: Conn, rel: Relation) -> None:
    """A partitioned target's leaves must be ordinary tables: a batch walks each one's heap by
    TID range (a foreign-table partition has none)."""
    with conn.cursor(row_factory=dict_row) as cur:
        odd = cur.execute(
            """
            SELECT format('%%I.%%I', n.nspname, c.relname) AS leaf, c.relkind::text AS relkind
            FROM pg_partition_tree(%s::regclass) t
            JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.isleaf AND c.relkind <> 'r' ORDER BY 1 LIMIT 1
            """,
            (rel.oid,),
        ).fetchone()
    if odd is not None:
        raise TargetTypeError(
            f"refusing {rel.schema}.{rel.name}: its partition {odd['leaf']} is not an ordinary "
            f"table (relkind {odd['relkind']}); batches walk each partition's heap by TID range"
        )


def leaves(conn: Conn, target: Target) -> list[Leaf]:
    """The relations a run deletes from, in order: the target itself when it is a plain table,
    else its leaf partitions at any depth (pg_partition_tree), each with its heap's pages."""
    if not target.partitioned:
        query = """
            SELECT %(oid)s::bigint AS oid, %(schema)s::text AS schema, %(name)s::text AS name,
                   pg_relation_size(%(oid)s) / current_setting('block_size')::int AS pages,
                   pg_relation_filenode(%(oid)s)::bigint AS relfilenode
            """
    else:
        query = """
            SELECT c.oid::bigint AS oid, n.nspname::text AS schema, c.relname::text AS name,
                   pg_relation_size(c.oid) / current_setting('block_size')::int AS pages,
                   pg_relation_filenode(c.oid)::bigint AS relfilenode
            FROM pg_partition_tree(%(oid)s::regclass) t
            JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.isleaf ORDER BY n.nspname, c.relname
            """
    params = {"oid": target.oid, "schema": target.schema, "name": target.name}
    with conn.cursor(row_factory=class_row(Leaf)) as cur:
        return cur.execute(query, params).fetchall()


# Column names of a one-JSON-blob-per-session store (the whaticket family's `Whatsapps.session`).
BLOB_COLUMNS = frozenset({"session", "sessions", "session_data", "auth_state", "authstate"})


def _is_text(kind: str) -> bool:
    return kind == "text" or kind.startswith(("character varying", "character("))


def refuse_blob(rel: Relation, columns: dict[str, str], key_column: str | None) -> None:
    """Refuse a table that keeps all of a session's keys in one JSON blob: it lacks the key
    column, and has a JSON or text column named like a session."""
    if key_column is not None and key_column in columns:
        return
    for column, kind in columns.items():
        if column.lower() in BLOB_COLUMNS and (kind in {"json", "jsonb"} or _is_text(kind)):
            raise TargetTypeError(
                f"refusing {rel.schema}.{rel.name}: it keeps each session's keys in one JSON blob "
                f"({column}), which the running application rewrites whole, so an edit by this "
                "job would be lost or would corrupt it"
            )


# Column types that hold key values (Baileys' JSON), never a tenant, type or id. (Not bytea:
# key ids may be kept as bytes.)
VALUE_TYPES = frozenset({"json", "jsonb"})


def _refuse_value_columns(
    rel: Relation, columns: dict[str, str], roles: list[tuple[str | None, str]], value: str
) -> None:
    """Refuse a tenant, key-type or key-id setting that names the value column, or a column of
    a type key values are kept in: the job reports tenants (the top tenants) and stores its
    reports, so such a setting would put key values there. The column's values are not shown."""
    for column, setting in roles:
        if column is None or column not in columns:
            continue
        if column == value or columns[column] in VALUE_TYPES:
            raise TargetTypeError(
                f"column {rel.schema}.{rel.name}.{column} ({setting}) is "
                + ("the value column" if column == value else columns[column])
                + ": key values are kept there, never a tenant, key type or key id; name the "
                "column that holds it"
            )


def _check_encoded(
    rel: Relation, columns: dict[str, str], encoded: Encoded, tenant_column: str | None
) -> Encoded:
    """The encoded layout's columns: a text key column, a JSON or text value column, and the
    tenant column when one is named. Returns `encoded` with the value column's type."""
    where = f"{rel.schema}.{rel.name}"
    wanted = [
        (encoded.key_column, "CLEANUP_KEY_COLUMN"),
        (encoded.value_column, "CLEANUP_VALUE_COLUMN"),
    ]
    if tenant_column is not None:
        wanted.append((tenant_column, "CLEANUP_TENANT_COLUMN, or none for a table of one session"))
    for column, setting in wanted:
        if column not in columns:
            raise TargetNotFound(f"column {column} does not exist in {where} (set {setting})")
    if not _is_text(kind := columns[encoded.key_column]):
        raise TargetTypeError(
            f"column {where}.{encoded.key_column} is {kind}, not text: the encoded layout's key "
            'column holds "<type>-<id>" (CLEANUP_KEY_COLUMN)'
        )
    value = columns[encoded.value_column]
    if value not in {"json", "jsonb"} and not _is_text(value):
        raise TargetTypeError(
            f"column {where}.{encoded.value_column} is {value}, not JSON or text "
            "(CLEANUP_VALUE_COLUMN)"
        )
    return replace(encoded, value_type="text" if _is_text(value) else value)


def _check_columns(
    rel: Relation,
    columns: dict[str, str],
    timestamp_column: str | None,
    key_type_column: str | None,
    expires_column: str | None,
) -> None:
    """TargetNotFound / TargetTypeError for a configured column the table lacks or types
    wrongly. The TTL column is optional: used when the table has it, checked when it does."""
    where = f"{rel.schema}.{rel.name}"
    ts_type = columns.get(timestamp_column) if timestamp_column is not None else TIMESTAMPTZ
    if ts_type is None:
        raise TargetNotFound(
            f"column {timestamp_column} does not exist in {where} "
            "(set CLEANUP_TIMESTAMP_COLUMN=none if the table has no timestamp)"
        )
    if ts_type not in TIMESTAMP_TYPES:
        raise TargetTypeError(f"column {where}.{timestamp_column} is {ts_type}, not a timestamp")
    if key_type_column is not None and key_type_column not in columns:
        raise TargetNotFound(
            f"column {key_type_column} does not exist in {where} "
            "(set CLEANUP_KEY_TYPE_COLUMN=none if the table has no key-type column)"
        )
    expires_type = columns.get(expires_column) if expires_column else None
    if expires_type is not None and expires_type not in TIMESTAMP_TYPES:
        raise TargetTypeError(
            f"column {where}.{expires_column} is {expires_type}, not a timestamp "
            "(set CLEANUP_EXPIRES_COLUMN to the TTL column, or unset it to turn the TTL rule off)"
        )


def resolve_target(
    conn: Conn,
    schema: str | None,
    name: str,
    timestamp_column: str | None,
    key_type_column: str | None,
    timestamp_timezone: str | None = None,
    *,
    expires_column: str | None = None,
    tenant_column: str | None = None,
    key_id_column: str | None = None,
    encoded: Encoded | None = None,
) -> Target:
    """Find the table in the catalog and check its columns; raise TargetNotFound or
    TargetTypeError (both ConfigError) when it will not do.

    An unqualified name resolves as PostgreSQL resolves it, pg_catalog first (it is on every
    search path implicitly), so `pg_class` is found as the system table and refused.
    """
    rel = _cleanable_relation(conn, schema, name)
    columns = table_columns(conn, rel.oid)
    refuse_blob(rel, columns, encoded.key_column if encoded else key_id_column)
    _refuse_value_columns(
        rel,
        columns,
        [(tenant_column, "CLEANUP_TENANT_COLUMN")]
        if encoded is not None
        else [
            (tenant_column, "CLEANUP_TENANT_COLUMN"),
            (key_type_column, "CLEANUP_KEY_TYPE_COLUMN"),
            (key_id_column, "CLEANUP_KEY_ID_COLUMN"),
        ],
        encoded.value_column if encoded is not None else "value",
    )
    if encoded is not None:
        encoded = _check_encoded(rel, columns, encoded, tenant_column)
        key_type_column = key_id_column = None
    _check_columns(rel, columns, timestamp_column, key_type_column, expires_column)
    expires_type = columns.get(expires_column) if expires_column else None
    return Target(
        rel.oid,
        rel.schema,
        rel.name,
        timestamp_column,
        key_type_column,
        _primary_key(conn, rel.oid),
        naive_timestamp=timestamp_column is not None and columns[timestamp_column] == TIMESTAMP,
        timestamp_timezone=timestamp_timezone,
        expires_column=expires_column if expires_type is not None else None,
        naive_expires=expires_type == TIMESTAMP,
        tenant_column=tenant_column if tenant_column in columns else None,
        key_id_column=key_id_column if key_id_column in columns else None,
        encoded=encoded,
        partitioned=rel.relkind == "p",
    )


def abbreviation_offset(conn: Conn, zone: str) -> timedelta | None:
    """The fixed UTC offset PostgreSQL reads `zone` as when it is a time-zone abbreviation
    (pg_timezone_abbrevs, matched without regard to case, as PostgreSQL matches them), else
    None. `AT TIME ZONE` takes an abbreviation before a zone name of the same spelling."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT utc_offset FROM pg_timezone_abbrevs WHERE lower(abbrev) = lower(%s) LIMIT 1",
            (zone,),
        ).fetchone()
    return None if row is None else row["utc_offset"]


def try_lock(conn: Conn, target: Target) -> bool:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT pg_try_advisory_lock(%s) AS locked", (LOCK_CLASS + target.oid,)
        ).fetchone()
    return bool(row and row["locked"])


def unlock(conn: Conn, target: Target) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_CLASS + target.oid,))


def clock(conn: Conn, days: Sequence[int]) -> tuple[datetime, dict[int, datetime]]:
    """The database's now() and `now() - d days` for each d, from one statement.

    Every cutoff and bucket edge comes from the database clock, in one snapshot of it, so a
    30-day retention and the 30-day bucket edge are the same instant.
    """
    wanted = sorted(set(days))
    query = sql.SQL("SELECT now() AS now{}").format(
        sql.SQL("").join(
            # Hours, not days: a day is 24 hours here whatever the session's zone.
            sql.SQL(", now() - make_interval(hours => {}) AS {}").format(
                sql.Literal(d * 24), sql.Identifier(f"d{d}")
            )
            for d in wanted
        )
    )
    with conn.cursor(row_factory=dict_row) as cur:
        row = fetch_one(cur.execute(query))
    return row["now"], {d: row[f"d{d}"] for d in wanted}


def find_auth_table(conn: Conn, schema: str | None, name: str) -> AuthTable | None:
    """The auth table as PostgreSQL resolves the name (the search path when unqualified), with
    its columns; None when there is no such table or view visible to this role."""
    # Not pg_catalog unless named: a creds table is the application's; tables, partitioned
    # tables, views, materialized views and foreign tables only.
    rel = find_relation(
        conn, schema, name, implicit_schemas=False, relkinds=("r", "p", "v", "m", "f")
    )
    if rel is None:
        return None
    return AuthTable(rel.schema, rel.name, table_columns(conn, rel.oid), rel.oid)


def column_collation(conn: Conn, oid: int, column: str) -> str | None:
    """A column's collation by name: None for a type without one, "default" for the
    database's."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT c.collname FROM pg_attribute a "
            "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
            "WHERE a.attrelid = %s AND a.attname = %s AND NOT a.attisdropped",
            (oid, column),
        ).fetchone()
    return None if row is None else row["collname"]


def lock_shared(conn: Conn, ident: sql.Composable) -> None:
    """ACCESS SHARE on a table read by the statements to come, under the current lock_timeout:
    what a SELECT takes, taken first so that a timeout is known to be that table's."""
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(ident))
