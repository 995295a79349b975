"""The job itself: resolve the target, lock, measure, guard, delete in batches, measure, report.

It knows nothing about Lambda, Sentry or Telegram. It takes settings, flags and a deadline and
returns a Report; every entry point is a thin shell around `run_cleanup`.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from psycopg import errors as pg_errors

from handler import db, lifecycle, rules
from handler.deleteloop import DeleteLoop, Measured, ProgressFn, remaining_ms, type_name
from handler.errors import CleanupError as CleanupError  # noqa: PLC0414 - re-exported
from handler.report import (
    STALLED_ALERT_RUNS,
    TREND_RUNS,
    KeptKeys,
    KeyEntry,
    OrphanRule,
    Report,
    Status,
    TableStats,
    TrendPoint,
    TypeStats,
    reclaimable_estimate,
)
from handler.settings import (
    BAILEYS_KEY_TYPES,
    DEFAULT_PROTECTED_KEY_TYPES,
    ConfigError,
    Flags,
    Settings,
    check_database_url,
)

# The reference deployment's creds table, looked for beside the key table when
# CLEANUP_AUTH_TABLE is unset.
DEFAULT_AUTH_TABLE = "whatsapp_auth"
# Zone names that PostgreSQL takes as fixed-offset abbreviations (pg_timezone_abbrevs), and an
# IANA zone that follows the daylight-saving rules the application most likely meant.
ZONE_FOR_ABBREVIATION = {
    "CET": "Europe/Berlin",
    "MET": "Europe/Berlin",
    "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}
# VACUUM is skipped with less time than this left: started, it would only be cancelled.
MIN_VACUUM_BUDGET_MS = 10_000
# The orphan rule takes a tenant only when a run at least this much earlier found it orphaned
# too (and every run since): a reload, restore or migration of the auth table is over by then.
ORPHAN_CONFIRM_AFTER = timedelta(hours=1)


# How an unreadable auth table is described in the refusal note.
_AUTH_PROBLEMS: dict[type[Exception], str] = {
    pg_errors.UndefinedTable: "no such table",
    pg_errors.InsufficientPrivilege: "permission denied: grant SELECT on it to the job's role",
    pg_errors.UndefinedColumn: "it has no tenant column (CLEANUP_TENANT_COLUMN)",
    pg_errors.UndefinedFunction: "its tenant column cannot be compared with the key table's",
    pg_errors.IndeterminateCollation: "its tenant column's collation conflicts with the key "
    "table's",
}


class _AuthLocked(Exception):
    """The auth table's lock could not be had within the lock timeout."""


def _table_stats(sizes: db.Sizes, keys: int) -> TableStats:
    return TableStats(
        keys=keys,
        table_bytes=sizes.table_bytes,
        index_bytes=sizes.index_bytes,
        total_bytes=sizes.total_bytes,
    )


class _Run:
    """State of one run. Private: `run_cleanup` is the interface."""

    def __init__(
        self,
        settings: Settings,
        flags: Flags,
        deadline: float | None,
        progress: ProgressFn | None,
        event_id: str | None,
    ) -> None:
        self.event_id = event_id
        self.settings = settings
        self.flags = flags
        self.deadline = deadline
        self.progress = progress
        self.retention_days = flags.retention_days or settings.retention_days
        self.started = time.monotonic()
        self.notes: list[str] = list(settings.config_warnings)
        self.live_run_would_fail = False
        self.orphan_rule: OrphanRule = "off"
        # The orphan rule's measured set (the tenants it takes), and the candidates this run
        # found, recorded in the history for the next run's confirmation (None: not recorded).
        self.orphaned: list[db.TenantCounts] = []
        self.candidates: list[str] | None = None
        self.orphan_candidates = 0
        self.auth: db.AuthTable | None = None
        self.auth_locked = False  # its lock timed out: neither the rule nor the creds read

    def _base(self, target: db.Target | None) -> dict[str, object]:
        s = self.settings
        overrides = dict(s.type_retention_days) if s.key_type_column else {}
        return {
            "event_id": self.event_id,
            "dry_run": self.flags.dry_run,
            "table": target.qualified if target else s.table,
            "timestamp_column": s.timestamp_column,
            "key_type_column": s.key_type_column,
            "retention_days": self.retention_days,
            "retention_overrides": overrides,
            "protected_types": list(s.protected_key_types) if s.key_type_column else [],
        }

    def _duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def _report(self, **fields: object) -> Report:
        return Report.model_validate(
            {
                **fields,
                "notes": list(self.notes),
                "live_run_would_fail": self.live_run_would_fail,
                "duration_ms": self._duration_ms(),
            }
        )

    def execute(self, conn: db.Conn) -> Report:
        s = self.settings
        if db.server_version(conn) < db.MIN_SERVER_VERSION:
            raise ConfigError(
                "PostgreSQL 14 or newer is required (batches walk the table by TID range)"
            )
        db.set_timeouts(conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms)
        schema, name = s.table_parts
        # TargetNotFound / TargetTypeError are ConfigErrors: they reach the caller as they are.
        target = db.resolve_target(
            conn,
            schema,
            name,
            s.timestamp_column,
            s.key_type_column,
            s.timestamp_timezone,
            expires_column=s.expires_column,
            tenant_column=s.tenant_column,
            key_id_column=s.key_id_column,
        )
        self._check_rule_columns(target)
        self._check_zone_name(conn)
        self._check_timezone(target)
        if self.flags.dry_run:
            self._check_live_privileges(conn, target)

        if not db.try_lock(conn, target):
            return self._report(
                status="skipped",
                reason="another cleanup run holds the lock on this table; nothing was touched",
                **self._base(target),
            )
        try:
            history = s.history_enabled and not self.flags.dry_run
            if history and self.event_id is not None:
                done_at = self._completed_before(conn, target)
                if done_at is not None:
                    return self._report(
                        status="skipped",
                        duplicate=True,
                        reason=(
                            f"event {self.event_id} already completed at "
                            f"{done_at.isoformat(timespec='seconds')}; not run again"
                        ),
                        **self._base(target),
                    )
            report = self._locked(conn, target)
            report = self._count_stalls(conn, report, history=history)
            report = self._record(conn, report) if history else report
            return self._with_trend(conn, report) if s.history_enabled else report
        finally:
            if not conn.closed and not conn.broken:
                db.unlock(conn, target)

    def _check_rule_columns(self, target: db.Target) -> None:
        s = self.settings
        if target.key_type_column is not None and target.key_id_column is None:
            raise ConfigError(
                f"column {s.key_id_column} does not exist in {target.qualified}: the key-lifecycle "
                "rules (pre-key window, own devices, sender keys) need the key id; set "
                "CLEANUP_KEY_ID_COLUMN"
            )
        if s.orphan_rule and target.tenant_column is None:
            raise ConfigError(
                f"column {s.tenant_column} does not exist in {target.qualified}: the orphan rule "
                "(CLEANUP_ORPHAN_RULE) needs CLEANUP_TENANT_COLUMN in both tables"
            )
        if (
            "expires_column" in s.model_fields_set
            and s.expires_column
            and not target.expires_column
        ):
            self.notes.append(
                f"CLEANUP_EXPIRES_COLUMN={s.expires_column}: no such column in "
                f"{target.qualified}; the TTL rule is off"
            )

    def _check_live_privileges(self, conn: db.Conn, target: db.Target) -> None:
        """A dry run says when the same run live would fail, or lose its history, for a grant.

        A dry run needs only SELECT; without this, a role that cannot delete reports "would
        delete 4,117" and the first live run fails with permission denied.
        """
        s = self.settings
        history = s.history_table_parts if s.history_enabled else None
        fatal, lacking = db.missing_live_privileges(conn, target, history)
        if fatal:
            self.live_run_would_fail = True
            self.notes.append(
                "a live run would fail: this role lacks " + ", ".join(fatal) + " (see the grants "
                "in docs/safety.md#least-privilege)"
            )
        if lacking:
            self.notes.append(
                "a live run would not record its run history: this role lacks " + ", ".join(lacking)
            )

    def _type_column_holds_types(self, target: db.Target, key_types: list[str | None]) -> bool:
        """False, with a note, when the configured column plainly holds no key types as Baileys
        spells them: none of the built-in protected types, and either no Baileys type at all
        (the wrong column, such as `key_id`) or a protected type spelt otherwise
        (`App-State-Sync-Key`). Protection would then match nothing, so a live run refuses
        (unless forced). A table of sessions and pre-keys alone (a new account) passes: its
        protected keys, once written, are spelt like the others. The column's values are not
        shown: a wrong column may hold secrets."""
        present = {t for t in key_types if t is not None}
        if present & set(DEFAULT_PROTECTED_KEY_TYPES):
            return True
        respelt = {t for t in present if _normalised_type(t) in DEFAULT_PROTECTED_KEY_TYPES}
        if present & BAILEYS_KEY_TYPES and not respelt:
            return True
        problem = (
            f"column {target.qualified}.{target.key_type_column} (CLEANUP_KEY_TYPE_COLUMN) "
            f"holds none of the built-in protected types ({', '.join(DEFAULT_PROTECTED_KEY_TYPES)}"
            f") in {len(key_types):,} distinct value(s)"
            + (", only other spellings of them" if respelt else ", and no key type Baileys writes")
            + ", so protection would match nothing: name the column Baileys writes the key type "
            "in (spelt as Baileys spells the types), or set CLEANUP_KEY_TYPE_COLUMN=none for a "
            "table without one"
        )
        if not self.flags.dry_run and not self.flags.force:
            raise ConfigError(f"{problem}; a live run refuses (--force overrides)")
        self.notes.append(f"{problem}; a live run refuses unless forced")
        return False

    def _check_zone_name(self, conn: db.Conn) -> None:
        """Refuse a CLEANUP_TIMESTAMP_TIMEZONE that PostgreSQL reads as a fixed-offset
        abbreviation where the IANA zone of that name has another offset at some time of the
        year: `CET` is +01:00 all year to `AT TIME ZONE`, so summer rows would be an hour off.
        (UTC, GMT, EST are the same either way, and pass.)"""
        zone = self.settings.timestamp_timezone
        if zone is None:
            return
        offset = db.abbreviation_offset(conn, zone)
        if offset is None:
            return
        info = ZoneInfo(zone)  # valid: checked by the settings
        year = datetime.now(UTC).year
        seasons = [datetime(year, month, 15, 12, tzinfo=UTC) for month in (1, 7)]
        if all(moment.astimezone(info).utcoffset() == offset for moment in seasons):
            return
        hours = offset.total_seconds() / 3600
        instead = ZONE_FOR_ABBREVIATION.get(zone.upper(), "an Area/City zone such as Europe/Berlin")
        raise ConfigError(
            f"CLEANUP_TIMESTAMP_TIMEZONE={zone}: PostgreSQL reads it as the abbreviation for the "
            f"fixed offset UTC{hours:+g}, all year, so rows written in summer time would be an "
            f"hour off; name the IANA zone instead, e.g. {instead}"
        )

    def _check_timezone(self, target: db.Target) -> None:
        """A `timestamp` column's zone must be known before anything is deleted by it."""
        zone = self.settings.timestamp_timezone
        naive = target.naive_timestamp or target.naive_expires
        column = f"{target.qualified}.{target.timestamp_column}"
        if not target.naive_timestamp and target.naive_expires:
            column = f"{target.qualified}.{target.expires_column}"
        if naive and zone is None:
            if not self.flags.dry_run:
                raise ConfigError(
                    f"column {column} is timestamp without time zone: set "
                    "CLEANUP_TIMESTAMP_TIMEZONE to the zone the application writes it in "
                    "(UTC if it writes UTC); a live run will not guess"
                )
            self.notes.append(
                f"column {column} is timestamp without time zone and CLEANUP_TIMESTAMP_TIMEZONE "
                "is not set: this dry run read it as UTC; a live run refuses until it is set"
            )
        elif not naive and zone is not None:
            self.notes.append(
                f"CLEANUP_TIMESTAMP_TIMEZONE={zone} not used: column {column} is timestamp with "
                "time zone"
            )

    def _completed_before(self, conn: db.Conn, target: db.Target) -> datetime | None:
        """When this event already completed, from the run history; None if not, or unknown.

        History is a side channel: a role that cannot read it gets a note, and the run goes on
        (the advisory lock still keeps two deliveries from running at once).
        """
        schema, name = self.settings.history_table_parts
        if self.event_id is None:
            return None
        try:
            if not db.history_exists(conn, schema, name):
                return None
            return db.completed_run_for_event(conn, schema, name, self.event_id, target.qualified)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.notes.append(
                f"run history not readable ({type(exc).__name__}): a repeated delivery of this "
                "event is not recognised; see keys-cleanup init-db for the grants"
            )
            return None

    def _count_stalls(self, conn: db.Conn, report: Report, *, history: bool) -> Report:
        """A live run that ended partial having deleted nothing: how many in a row, from the
        run history (a side channel: unreadable, this run alone counts)."""
        if report.dry_run or report.status != "partial" or report.deleted:
            return report
        before = 0
        schema, name = self.settings.history_table_parts
        if history:
            try:
                if db.history_exists(conn, schema, name):
                    before = db.stalled_runs_before(conn, schema, name, report.table, 1000)
            except psycopg.Error:
                if conn.broken:
                    raise
        runs = before + 1
        update: dict[str, object] = {"stalled_runs": runs}
        if runs >= STALLED_ALERT_RUNS:
            update["notes"] = [
                *report.notes,
                f"{runs} live runs in a row ended partial having deleted nothing: the job is "
                "stuck, see the reason (a replica or slot far behind, a table lock)",
            ]
        return report.model_copy(update=update)

    def _record(self, conn: db.Conn, report: Report) -> Report:
        """Add the run to the history table, creating it when the role may.

        History is a side channel: failing to write it is a note on the report, never a failed
        run (the rows are already deleted).
        """
        schema, name = self.settings.history_table_parts
        try:
            if not db.history_exists(conn, schema, name):
                db.create_history(conn, schema, name)
            db.insert_history(conn, schema, name, history_row(report, self.candidates))
        except psycopg.Error as exc:
            if conn.broken:
                raise
            note = f"run history not recorded ({type(exc).__name__}; see keys-cleanup init-db)"
            return report.model_copy(update={"notes": [*report.notes, note]})
        return report

    def _with_trend(self, conn: db.Conn, report: Report) -> Report:
        """The last recorded runs' keys and sizes (this one included when recorded). Like
        recording, a side channel: a failed read is a note on the report, never a failure."""
        schema, name = self.settings.history_table_parts
        try:
            if not db.history_exists(conn, schema, name):
                return report
            points = db.recent_runs(conn, schema, name, report.table, TREND_RUNS)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            note = f"run history not read ({type(exc).__name__}); no trend this run"
            return report.model_copy(update={"notes": [*report.notes, note]})
        return report.model_copy(update={"trend": trend_points(points)})

    def _policy(
        self, conn: db.Conn, target: db.Target
    ) -> tuple[db.Policy, datetime, dict[int, datetime]]:
        """The cutoffs, bucket edges and the TTL's "now", all from one reading of the database
        clock; and the orphan rule when its auth table is usable."""
        s = self.settings
        overrides = dict(s.type_retention_days) if s.key_type_column else {}
        days = [self.retention_days, *db.BUCKET_DAYS, *overrides.values(), s.orphan_grace_days]
        now, edges = db.clock(conn, days)
        self.auth = self._find_auth(conn, target)
        policy = db.Policy(
            cutoff=edges[self.retention_days],
            protected=tuple(s.protected_key_types) if s.key_type_column else (),
            type_cutoffs={t: edges[d] for t, d in overrides.items()},
            expires_now=now if target.expires_column else None,
            orphans=self._orphan_rule(conn, target, edges[s.orphan_grace_days], now),
            lifecycle=self._lifecycle(conn, target),
        )
        return policy, now, edges

    def _find_auth(self, conn: db.Conn, target: db.Target) -> db.AuthTable | None:
        """The creds table: CLEANUP_AUTH_TABLE, else `whatsapp_auth` beside the key table."""
        parts = self.settings.auth_table_parts
        if parts is None:
            return db.find_auth_table(conn, target.schema, DEFAULT_AUTH_TABLE)
        return db.find_auth_table(conn, parts[0], parts[1])

    def _lifecycle(self, conn: db.Conn, target: db.Target) -> lifecycle.Lifecycle | None:
        """The key-lifecycle facts from the creds (docs/key-lifecycle.md), or None without a
        key-type column. Creds that cannot be read are a note: those tenants keep every
        pre-key, and their sender keys wait for their groups' memory rows."""
        s = self.settings
        if target.key_type_column is None:
            return None
        source = s.auth_table or f"{target.schema}.{DEFAULT_AUTH_TABLE}"
        problem: str | None = None
        rows: list[tuple[str | None, object]] = []
        if self.auth is None:
            problem = f"no auth table {source} (CLEANUP_AUTH_TABLE)"
        elif target.tenant_column is None:
            problem = f"{target.qualified} has no tenant column {s.tenant_column}"
        elif s.tenant_column not in self.auth.columns or s.creds_column not in self.auth.columns:
            problem = (
                f"{self.auth.qualified} lacks column {s.tenant_column} or {s.creds_column} "
                "(CLEANUP_TENANT_COLUMN, CLEANUP_CREDS_COLUMN)"
            )
        elif (kind := self.auth.columns[s.creds_column]) not in db.JSON_TYPES | db.TEXT_TYPES:
            problem = f"{self.auth.qualified}.{s.creds_column} is {kind}, not JSON or text"
        elif self.auth_locked:
            problem = self._locked_problem(self.auth.qualified)
        else:
            try:
                rows = db.read_creds(conn, self.auth, s.tenant_column, s.creds_column)
            except pg_errors.LockNotAvailable:
                problem = self._locked_problem(self.auth.qualified)
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                problem = f"{self.auth.qualified} not readable ({type(exc).__name__})"
        facts, problems = lifecycle.build(
            rows, window=s.prekey_window, prekey_age_only=s.prekey_age_only
        )
        if s.prekey_age_only:
            self.notes.append(
                "CLEANUP_PREKEY_AGE_ONLY=true: pre-keys go by age alone, including ones the "
                "server may still hand out (their first messages then fail)"
            )
        elif problem is not None:
            self.notes.append(f"creds not read, so every pre-key is kept: {problem}")
        for why, tenants in sorted(problems.items()):
            self.notes.append(
                f"pre-keys of {tenants:,} tenant{'' if tenants == 1 else 's'} kept: {why}"
            )
        return facts

    def _retention_for(self, key_type: str | None, policy: db.Policy) -> int | None:
        """A type's retention in days; None for a protected type. A NULL type: the default."""
        if key_type is not None and key_type in policy.protected:
            return None
        if key_type is not None and key_type in policy.type_cutoffs:
            return self.settings.type_retention_days[key_type]
        return self.retention_days

    def _locked_problem(self, table: str) -> str:
        return (
            f"{table} is locked by another session (waited CLEANUP_LOCK_TIMEOUT_MS="
            f"{self.settings.lock_timeout_ms:,}; is it being reloaded?)"
        )

    def _orphan_rule(
        self, conn: db.Conn, target: db.Target, cutoff: datetime, now: datetime
    ) -> db.Orphans | None:
        """The orphan rule, or None when it is off or its auth table is refused (with a note).

        An auth table that cannot be read is a note, never a failed run: the age and TTL rules
        do not need it. The rule's tenants are, for now, the candidates the earlier runs
        recorded; the measuring pass narrows them to the measured set.
        """
        s = self.settings
        if not s.orphan_rule:
            return None
        auth_table = s.auth_table or f"{target.schema}.{DEFAULT_AUTH_TABLE}"
        problem, has_tenants = None, False
        if self.auth is None:
            problem = "no such table"
            orphans = None
        else:
            orphans = db.Orphans(self.auth.schema, self.auth.name, cutoff)
            problem = self._collation_problem(conn, target, self.auth)
            try:
                has_tenants = problem is None and db.auth_has_tenants(conn, target, orphans)
            except pg_errors.LockNotAvailable:
                self.auth_locked = True
                problem = self._locked_problem(self.auth.qualified)
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                problem = _AUTH_PROBLEMS.get(type(exc), type(exc).__name__)
        refusal = rules.orphan_refusal(
            auth_table=auth_table,
            problem=problem,
            has_tenants=has_tenants,
            orphaned_tenants=0,
            tenants=0,
            max_fraction=s.max_orphan_tenant_fraction,
        )
        if refusal is None and not s.history_enabled:
            refusal = (
                "orphan rule refused: it takes a tenant only when a run at least "
                f"{_hours(ORPHAN_CONFIRM_AFTER)} earlier found it orphaned too, and that needs "
                "the run history (CLEANUP_HISTORY=false); nothing is deleted by it"
            )
        if refusal is not None or orphans is None:
            self.notes.append(refusal or "orphan rule refused")
            self.orphan_rule = "refused"
            return None
        earlier = self._earlier_candidates(conn, target, now)
        return replace(orphans, tenants=tuple(sorted(earlier or ())))

    def _collation_problem(
        self, conn: db.Conn, target: db.Target, auth: db.AuthTable
    ) -> str | None:
        """Two tenant columns of different explicit collations: PostgreSQL cannot compare them
        (IndeterminateCollation), and either collation could decide what "equal" means."""
        column = self.settings.tenant_column
        ours = db.column_collation(conn, target.oid, column)
        theirs = db.column_collation(conn, auth.oid, column)
        if ours is None or theirs is None or ours == theirs or "default" in (ours, theirs):
            return None
        return (
            f'its tenant column is COLLATE "{theirs}" and {target.qualified}.{column} '
            f'COLLATE "{ours}": tenant ids cannot be compared; give both the same collation'
        )

    def _earlier_candidates(
        self, conn: db.Conn, target: db.Target, now: datetime
    ) -> set[str] | None:
        """The tenants that the last run at least ORPHAN_CONFIRM_AFTER ago, and every run
        since, recorded as orphan candidates; None when none did (or the history is not
        readable: a note)."""
        schema, name = self.settings.history_table_parts
        try:
            if not db.history_exists(conn, schema, name):
                return None
            runs = db.orphan_candidates(
                conn, schema, name, target.qualified, now - ORPHAN_CONFIRM_AFTER
            )
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.notes.append(
                f"run history not readable ({type(exc).__name__}): the orphan rule cannot "
                "confirm any tenant, and deletes nothing this run"
            )
            return None
        if runs is None:
            return None
        confirmed = set(runs[0])
        for later in runs[1:]:
            confirmed &= set(later)
        return confirmed

    def _measure(
        self, conn: db.Conn, target: db.Target, edges: list[datetime], policy: db.Policy
    ) -> tuple[db.Measurement, db.Policy]:
        """The measuring pass. With the orphan rule, the auth table's lock is taken first: if
        it cannot be had within the lock timeout, the rule is refused (a note) and the pass
        runs without it."""
        by_tenant = self.settings.top_tenants > 0
        if policy.orphans is None:
            return db.measure(conn, target, edges, policy, by_tenant=by_tenant), policy
        orphans = policy.orphans
        try:
            with conn.transaction():
                try:
                    db.lock_shared(conn, orphans.ident)
                except pg_errors.LockNotAvailable as exc:
                    raise _AuthLocked from exc
                return db.measure(conn, target, edges, policy, by_tenant=True), policy
        except _AuthLocked:
            self.notes.append(
                f"orphan rule refused: auth table {self._locked_problem(orphans.qualified)} "
                "during the measuring pass; the other rules go on"
            )
            self.orphan_rule = "refused"
            policy = replace(policy, orphans=None)
            return db.measure(conn, target, edges, policy, by_tenant=by_tenant), policy

    def _check_orphan_share(self, policy: db.Policy, tenants: list[db.TenantCounts]) -> db.Policy:
        """The policy with the orphan rule's measured set, or without the rule when it would
        orphan too large a share of the tenants, or more than CLEANUP_MAX_ORPHAN_TENANTS."""
        s = self.settings
        self.orphaned = rules.orphaned_tenants(tenants)
        if policy.orphans is None:
            return policy
        candidates = sorted(
            t.tenant for t in tenants if t.without_auth and not t.fresh and t.tenant is not None
        )
        self.orphan_candidates = len(candidates)
        without_auth = [t for t in tenants if t.without_auth and t.tenant is not None]
        would = sum(t.orphaned for t in self.orphaned)
        refusal = rules.orphan_refusal(
            auth_table=policy.orphans.qualified,
            problem=None,
            has_tenants=True,
            orphaned_tenants=len(without_auth),
            tenants=sum(1 for t in tenants if t.tenant is not None),
            max_fraction=s.max_orphan_tenant_fraction,
        )
        if refusal is not None:
            self.notes.append(
                f"{refusal} It would have taken {would:,} keys." if would else refusal
            )
            self.orphan_rule = "refused"
            return replace(policy, orphans=None)
        # The auth table looked sane: this run's candidates confirm the next run's.
        self.candidates = candidates
        if len(self.orphaned) > s.max_orphan_tenants:
            self.notes.append(
                f"orphan rule refused: {len(self.orphaned):,} tenants are orphaned (no auth row, "
                f"no key touched for {s.orphan_grace_days}d, on two runs), above "
                f"CLEANUP_MAX_ORPHAN_TENANTS={s.max_orphan_tenants:,}; it would have taken "
                f"{would:,} keys. Check them, then raise the setting for one run"
            )
            self.orphan_rule = "refused"
            return replace(policy, orphans=None)
        self.orphan_rule = "applied"
        waiting = len(candidates) - len(self.orphaned)
        if waiting > 0:
            self.notes.append(
                f"orphan rule: {waiting:,} tenant{'' if waiting == 1 else 's'} without an auth "
                f"row and no key touched for {s.orphan_grace_days}d recorded; to confirm, a run "
                f"at least {_hours(ORPHAN_CONFIRM_AFTER)} later must find "
                f"{'it' if waiting == 1 else 'them'} so again before their keys go"
                + ("" if s.history_enabled and not self.flags.dry_run else " (a live run records)")
            )
        ids = tuple(t.tenant for t in self.orphaned if t.tenant is not None)
        return replace(policy, orphans=replace(policy.orphans, tenants=ids))

    def _rule_fields(
        self,
        target: db.Target,
        measured: db.Measurement,
        total: rules.Totals,
        bucket_edges: list[datetime],
    ) -> dict[str, object]:
        """The report's TTL, orphan and tenant figures."""
        s, applied = self.settings, self.orphan_rule == "applied"
        ids = [t.tenant for t in self.orphaned if t.tenant is not None]
        return {
            "expires_column": target.expires_column,
            "expired": total.expired,
            "expired_by_age": rules.expired_by_age(measured.types, bucket_edges),
            "auth_table": self.auth.qualified if self.auth else s.auth_table,
            "orphan_rule": self.orphan_rule,
            "orphan_grace_days": s.orphan_grace_days if s.orphan_rule else None,
            "orphaned": total.orphaned,
            "orphaned_tenants": len(ids),
            "orphan_candidates": self.orphan_candidates,
            "orphaned_tenant_ids": ids[: rules.MAX_ORPHANED_TENANT_IDS]
            if self.flags.verbose
            else [],
            "top_tenants": rules.top_tenants(measured.tenants, s.top_tenants, orphans=applied),
        }

    def _locked(self, conn: db.Conn, target: db.Target) -> Report:
        s, flags = self.settings, self.flags
        policy, now, edges = self._policy(conn, target)
        before_sizes = db.sizes(conn, target)
        measured, policy = self._measure(conn, target, list(edges.values()), policy)
        counts = measured.types
        policy = self._check_orphan_share(policy, measured.tenants)
        orphans = db.applies_orphans(target, policy)
        by_type = {
            type_name(c.key_type): rules.type_stats(
                c, self._retention_for(c.key_type, policy), orphans=orphans
            )
            for c in counts
        }
        keys = sum(c.keys for c in counts)
        total = rules.totals(counts, orphans=orphans)
        eligible, protected = total.eligible, total.protected
        if target.key_type_column is None:
            by_type = {}
        elif keys and not self._type_column_holds_types(target, [c.key_type for c in counts]):
            by_type = {}  # not key types
        elif keys:
            self.notes.extend(
                rules.unmatched_type_notes(
                    {
                        "CLEANUP_PROTECTED_KEY_TYPES": [
                            t
                            for t in s.extra_protected_key_types
                            if t not in DEFAULT_PROTECTED_KEY_TYPES
                        ],
                        "CLEANUP_TYPE_RETENTION_DAYS": list(s.type_retention_days),
                    },
                    [c.key_type for c in counts if c.key_type is not None],
                )
            )
        bucket_edges = [edges[d] for d in db.BUCKET_DAYS]
        oldest = min((c.oldest for c in counts if c.oldest), default=None)
        newest = max((c.newest for c in counts if c.newest), default=None)
        fields: dict[str, object] = self._base(target) | {
            "cutoff": policy.cutoff,
            "started_at": now,
            "eligible": eligible,
            "protected": protected,
            "before": _table_stats(before_sizes, keys),
            "age_distribution": rules.age_distribution(counts, bucket_edges),
            "no_timestamp": sum(c.keys - c.with_timestamp - c.out_of_range for c in counts),
            "out_of_range_timestamps": sum(c.out_of_range for c in counts),
            "oldest": oldest,
            "newest": newest,
            "kept": _kept(counts, policy),
            **self._rule_fields(target, measured, total, bucket_edges),
        }

        guard = (
            None if flags.force else rules.guard_reason(eligible, keys, s, dry_run=flags.dry_run)
        )
        if guard is not None and (total.expired or total.orphaned):
            self.notes.append(
                f"the guard counts every rule together: of the {eligible:,} eligible keys, "
                f"{total.expired:,} are expired (TTL) and {total.orphaned:,} orphaned; a key "
                "eligible by several rules counts once"
            )
        if guard is not None and not flags.dry_run:
            return self._report(
                status="aborted", reason=guard, guard_triggered=True, by_type=by_type, **fields
            )

        if flags.dry_run:
            listing: db.Listing = []
            if flags.verbose and s.verbose_limit and eligible:
                listing = db.list_eligible(conn, target, policy, now, s.verbose_limit)
            return self._report(
                status="completed",
                reason=guard,
                guard_triggered=guard is not None,
                by_type=by_type,
                # What a live run would make reusable: the eligible keys at the average size.
                reclaimable_bytes=reclaimable_estimate(before_sizes.table_bytes, keys, eligible),
                keys=[_entry(target, item) for item in listing],
                keys_omitted=max(0, eligible - len(listing)) if flags.verbose else 0,
                **fields,
            )

        return self._delete(conn, target, policy, now, before_sizes, eligible, by_type, fields)

    def _delete(
        self,
        conn: db.Conn,
        target: db.Target,
        policy: db.Policy,
        now: datetime,
        before_sizes: db.Sizes,
        eligible: int,
        by_type: dict[str, TypeStats],
        fields: dict[str, object],
    ) -> Report:
        s, flags = self.settings, self.flags
        before = fields["before"]
        if not isinstance(before, TableStats):  # pragma: no cover - set by _locked
            raise TypeError("before-run measurement missing")
        # Each rule deletes at most what it was measured to take (plus a margin): the orphan
        # rule's tenants' eligible keys, and the others'.
        of_orphans = sum(t.eligible + t.orphan_extra for t in self.orphaned)
        applied = db.applies_orphans(target, policy)
        loop = DeleteLoop(
            conn,
            target,
            policy,
            now,
            measured=Measured(eligible - of_orphans, of_orphans) if applied else Measured(eligible),
            settings=s,
            deadline=self.deadline,
            pages_total=before_sizes.pages,
            keys=before.keys,
            eligible=eligible,
            list_limit=s.verbose_limit if flags.verbose else 0,
            # The verbose listing needs RETURNING anyway; the counts per type then come free.
            count_by_type=flags.verbose and target.key_type_column is not None,
            progress=self.progress,
        )
        loop.run()
        status: Status = loop.status
        listing = loop.listing
        deleted = loop.deleted
        self.notes.extend(loop.notes)
        deleted_by_type = self._deleted_by_type(loop, by_type, eligible)
        if by_type and deleted_by_type is None:
            self.notes.append(
                f"per-type split of the deleted keys not counted: {_gap(eligible, deleted)}"
            )
        vacuumed = flags.vacuum and self._vacuum(conn, target, status)
        after: TableStats | None = None
        try:
            # Sizes are measured again. Keys are not recounted: the first pass over a table
            # just after a mass DELETE visits every dead row and sets its hint bits, which cost
            # 2.4 s at 1M rows and 11 s at 4M in bench/ and stalled the application's writers.
            # keys_counted=False says the figure is before - deleted.
            after = _table_stats(db.sizes(conn, target), before.keys - deleted).model_copy(
                update={"keys_counted": False}
            )
        except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
            self.notes.append("after-run measurement timed out; sizes after the run are unknown")
        final_by_type = {
            k: v.model_copy(
                update={"deleted": None if deleted_by_type is None else deleted_by_type.get(k, 0)}
            )
            for k, v in by_type.items()
        }
        return self._report(
            status=status,
            reason=loop.reason,
            deleted=deleted,
            orphaned_deleted=loop.orphaned,
            after=after,
            by_type=final_by_type,
            released_bytes=(before.total_bytes - after.total_bytes) if after else 0,
            # An estimate: the deleted keys at the table's average stored size per key (heap
            # and TOAST, as pg_table_size counts them).
            reclaimable_bytes=reclaimable_estimate(before.table_bytes, before.keys, deleted),
            vacuumed=vacuumed,
            batches=loop.batches,
            batch_retries=loop.retries,
            skipped_pages=loop.skipped_pages,
            max_batch_ms=round(loop.max_batch_ms),
            max_batch_rows=loop.max_batch_rows,
            throttle_waits=loop.throttle_waits,
            throttle_wait_ms=round(loop.throttle_wait_s * 1000),
            pacing_wait_ms=round(loop.pacing_wait_s * 1000),
            keys=[_entry(target, item) for item in listing],
            keys_omitted=max(0, deleted - len(listing)) if flags.verbose else 0,
            **fields,
        )

    def _vacuum(self, conn: db.Conn, target: db.Target, status: Status) -> bool:
        """VACUUM (ANALYZE) after a completed run; True when it ran on the table.

        VACUUM is a courtesy: the rows are already deleted, and autovacuum reclaims the space
        anyway. Any trouble with it (its lock held by another VACUUM, CREATE INDEX
        CONCURRENTLY or an anti-wraparound autovacuum; the deadline; a permission) is a note,
        never a failed run, which would lose the history row and trigger a retry.
        """
        s = self.settings
        if status != "completed":
            self.notes.append("VACUUM skipped: the run did not complete")
            return False
        remaining = remaining_ms(self.deadline)
        if remaining < MIN_VACUUM_BUDGET_MS:
            self.notes.append(
                f"VACUUM skipped: {max(0, remaining) / 1000:.1f} s left before the deadline"
            )
            return False
        try:
            db.set_timeouts(
                conn,
                statement_ms=int(min(s.statement_timeout_ms, remaining)),
                lock_ms=s.lock_timeout_ms,
            )
            skipped = [n for n in db.vacuum_analyze(conn, target) if "skipping" in n]
        except pg_errors.LockNotAvailable:
            self.notes.append(
                "VACUUM not done: another session holds its lock (a VACUUM, CREATE INDEX "
                "CONCURRENTLY or anti-wraparound autovacuum); autovacuum reclaims the space"
            )
            return False
        except pg_errors.QueryCanceled:
            self.notes.append(
                "VACUUM not finished: cancelled at its time limit (the deadline, or "
                "CLEANUP_STATEMENT_TIMEOUT_MS); autovacuum reclaims the space"
            )
            return False
        except psycopg.Error as exc:
            if conn.broken:
                raise
            self.notes.append(f"VACUUM failed ({type(exc).__name__}); the deletions stand")
            return False
        finally:
            if not conn.broken:
                # The session's own timeouts again, for the after-run measurement and history.
                db.set_timeouts(
                    conn, statement_ms=s.statement_timeout_ms, lock_ms=s.lock_timeout_ms
                )
        self.notes.extend(skipped)
        return not skipped

    @staticmethod
    def _deleted_by_type(
        loop: DeleteLoop, by_type: dict[str, TypeStats], eligible: int
    ) -> dict[str, int] | None:
        """Deleted keys per type, or None where they were not counted and cannot be known.

        Counted by RETURNING when the loop asked for it. Otherwise they follow exactly from the
        measurement when every eligible key was deleted: timestamps only move forward (Baileys'
        trigger sets updated_at = NOW()), so no key outside the measured eligible set can have
        been deleted, and equal totals mean equal sets, type by type.
        """
        if loop.deleted_by_type is not None:
            return loop.deleted_by_type
        if loop.deleted == eligible:
            return {name: stats.eligible for name, stats in by_type.items()}
        return None


def _gap(eligible: int, deleted: int) -> str:
    """Why the deleted keys differ from the eligible ones measured, in counts that are never
    negative: fewer (refreshed, removed by the application, left for the next run) or more
    (keys that became eligible during the run)."""
    if deleted < eligible:
        return (
            f"{eligible - deleted:,} of the {eligible:,} eligible keys were not deleted: "
            "refreshed or removed by the application during the run, or left for the next run "
            "(run with --verbose to count each type)"
        )
    return (
        f"{deleted - eligible:,} more keys were deleted than were eligible when measured "
        f"({eligible:,}): keys that became eligible during the run, such as ones written with "
        "an old timestamp (run with --verbose to count each type)"
    )


def _normalised_type(key_type: str) -> str:
    """`App_State_Sync Key` -> `app-state-sync-key`: how another spelling of a type compares."""
    return re.sub(r"[\s_]+", "-", key_type.strip().lower())


def _kept(counts: list[db.TypeCounts], policy: db.Policy) -> list[KeptKeys]:
    """What the key lifecycle kept of the aged (or expired) keys, per type and reason."""
    kept = []
    for reason, (key_type, why) in lifecycle.KEEP_REASONS.items():
        n = sum(c.kept.get(reason, 0) for c in counts if c.key_type not in policy.protected)
        if n:
            kept.append(KeptKeys(key_type=key_type, keys=n, reason=why))
    return kept


def trend_points(runs: list[db.RunPoint]) -> list[TrendPoint]:
    """The run history's last runs as the report's trend."""
    return [
        TrendPoint(finished_at=r.finished_at, keys=r.keys, total_bytes=r.total_bytes) for r in runs
    ]


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} hour{'' if hours == 1 else 's'}"


def history_row(report: Report, orphan_candidates: list[str] | None = None) -> db.HistoryRow:
    return db.HistoryRow(
        event_id=report.event_id,
        target_table=report.table,
        started_at=report.started_at or datetime.now(UTC),
        status=report.status,
        keys_before=report.before.keys if report.before else None,
        keys_after=report.after.keys if report.after else None,
        total_bytes_before=report.before.total_bytes if report.before else None,
        total_bytes_after=report.after.total_bytes if report.after else None,
        eligible=report.eligible,
        deleted=report.deleted,
        duration_ms=report.duration_ms,
        report_json=report.model_dump_json(),
        orphan_candidates=orphan_candidates,
    )


def _entry(target: db.Target, item: tuple[list[str | None], str | None, float | None]) -> KeyEntry:
    values, key_type, age = item
    return KeyEntry(
        key=dict(zip(db.key_columns(target), values, strict=True)),
        key_type=key_type,
        age_days=None if age is None else round(age, 2),
    )


def open_database(settings: Settings) -> db.Conn:
    """Check DATABASE_URL, then connect: the one way every command (a run, init-db, history)
    opens its connection. --database-url and model_copy bypass the settings validator, so the
    URL is checked here again: a raw `@` in the password is refused before libpq can print
    the rest of it as a host name."""
    if settings.database_url is None:
        raise ConfigError(
            "no database: set DATABASE_URL or DATABASE_SECRET_ARN (or pass --database-url)"
        )
    dsn = settings.database_url.get_secret_value()
    check_database_url(dsn)
    try:
        return db.connect(dsn, connect_timeout_s=settings.connect_timeout_s)
    except db.DatabaseError as exc:
        raise CleanupError(str(exc)) from None


def run_cleanup(
    settings: Settings,
    flags: Flags,
    *,
    deadline: float | None = None,
    progress: ProgressFn | None = None,
    event_id: str | None = None,
) -> Report:
    """Run the job once and return its Report.

    `deadline` is a `time.monotonic()` instant: no batch starts that could not finish before it,
    and the report then says `partial`. Raises ConfigError for a bad target or settings and
    CleanupError for database failures; neither message holds a secret.
    """
    settings.check_flags(flags)
    run = _Run(settings, flags, deadline, progress, event_id)
    conn = open_database(settings)
    dsn = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        with conn:
            report = run.execute(conn)
    except psycopg.Error as exc:
        detail = db.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "", dsn)
        raise CleanupError(f"database error ({type(exc).__name__}): {detail}") from None
    return report
