"""The orphan rule in one run (docs/rules.md#the-orphan-rule): refused or applied, and why.

A tenant's keys go only when it has no row in the auth table, none of its keys was touched
within the grace, a run at least ORPHAN_CONFIRM_AFTER earlier found it so too, and the auth
table looks sane (not too large a share of the tenants). Anything doubtful refuses the rule
for this run, with a note; the age and TTL rules go on.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
from psycopg import errors as pg_errors

from handler import db, rules
from handler.authtable import auth_table_name, locked_problem
from handler.history import ORPHAN_CONFIRM_AFTER, History
from handler.report import OrphanRule
from handler.settings import Flags, Settings

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


def _quiet(settings: Settings) -> str:
    """How a candidate was quiet: for the grace, or (no timestamp) not known."""
    if settings.timestamp_column is None:
        return " (no timestamp: no grace)"
    return f" and no key touched for {settings.orphan_grace_days}d"


def hours(delta: timedelta) -> str:
    n = delta.total_seconds() / 3600
    return f"{n:g} hour{'' if n == 1 else 's'}"


class OrphanRun:
    """The orphan rule's state in one run: refused or applied, its measured set of tenants,
    and the candidates recorded for the next run's confirmation."""

    def __init__(
        self, settings: Settings, flags: Flags, history: History, notes: list[str]
    ) -> None:
        self.settings, self.flags, self.history, self.notes = settings, flags, history, notes
        self.auth: db.AuthTable | None = None
        self.auth_locked = False  # its lock timed out: neither the rule nor the creds read
        self.state: OrphanRule = "off"
        # The measured set (the tenants the rule takes), and the candidates this run found,
        # recorded in the history for the next run's confirmation (None: not recorded).
        self.orphaned: list[db.TenantCounts] = []
        self.candidates: list[str] | None = None
        self.candidate_count = 0

    @property
    def applied(self) -> bool:
        return self.state == "applied"

    def _refuse(self, note: str) -> None:
        self.notes.append(note)
        self.state = "refused"

    def rule(
        self, conn: db.Conn, target: db.Target, cutoff: datetime, now: datetime
    ) -> db.Orphans | None:
        """The rule, or None when it is off or its auth table is refused (with a note).

        An auth table that cannot be read is a note, never a failed run. The rule's tenants
        are, for now, the candidates the earlier runs recorded; the measuring pass narrows
        them to the measured set.
        """
        s = self.settings
        if not s.orphan_rule:
            return None
        problem, has_tenants, orphans = self._probe(conn, target, cutoff)
        refusal = rules.orphan_refusal(
            auth_table=auth_table_name(s, target),
            problem=problem,
            has_tenants=has_tenants,
            orphaned_tenants=0,
            tenants=0,
            max_fraction=s.max_orphan_tenant_fraction,
        )
        if refusal is None and not s.history_enabled:
            refusal = (
                "orphan rule refused: it takes a tenant only when a run at least "
                f"{hours(ORPHAN_CONFIRM_AFTER)} earlier found it orphaned too, and that needs "
                "the run history (CLEANUP_HISTORY=false); nothing is deleted by it"
            )
        if refusal is not None or orphans is None:
            self._refuse(refusal or "orphan rule refused")
            return None
        earlier = self.history.earlier_candidates(target.qualified, now)
        return replace(orphans, tenants=tuple(sorted(earlier or ())))

    def _probe(
        self, conn: db.Conn, target: db.Target, cutoff: datetime
    ) -> tuple[str | None, bool, db.Orphans | None]:
        """Whether the auth table can serve: (its problem, whether it has tenants, the rule)."""
        if self.auth is None:
            return "no such table", False, None
        column = self.settings.auth_tenant
        orphans = db.Orphans(self.auth.schema, self.auth.name, cutoff, tenant_column=column)
        if target.encoded is None and self.auth.columns and column not in self.auth.columns:
            setting = (
                "CLEANUP_AUTH_TENANT_COLUMN"
                if self.settings.auth_tenant_column
                else "CLEANUP_TENANT_COLUMN"
            )
            return f"it has no tenant column {column} ({setting})", False, orphans
        problem = self._collation_problem(conn, target, self.auth)
        try:
            has_tenants = problem is None and db.auth_has_tenants(conn, target, orphans)
        except pg_errors.LockNotAvailable:
            self.auth_locked = True
            return locked_problem(self.settings, self.auth.qualified), False, orphans
        except psycopg.Error as exc:
            if conn.broken:
                raise
            return _AUTH_PROBLEMS.get(type(exc), type(exc).__name__), False, orphans
        return problem, has_tenants, orphans

    def _collation_problem(
        self, conn: db.Conn, target: db.Target, auth: db.AuthTable
    ) -> str | None:
        """Two tenant columns of different explicit collations: PostgreSQL cannot compare them
        (IndeterminateCollation), and either collation could decide what "equal" means."""
        column, auth_column = self.settings.tenant_column, self.settings.auth_tenant
        if column is None or auth_column is None or target.encoded is not None:
            return None  # encoded: the creds rows are in the key table itself
        ours = db.column_collation(conn, target.oid, column)
        theirs = db.column_collation(conn, auth.oid, auth_column)
        if ours is None or theirs is None or ours == theirs or "default" in (ours, theirs):
            return None
        return (
            f'its tenant column is COLLATE "{theirs}" and {target.qualified}.{column} '
            f'COLLATE "{ours}": tenant ids cannot be compared; give both the same collation'
        )

    def measure(
        self,
        conn: db.Conn,
        target: db.Target,
        edges: list[datetime],
        policy: db.Policy,
        heads: dict[int, int] | None = None,
    ) -> tuple[db.Measurement, db.Policy]:
        """The measuring pass. With the orphan rule, the auth table's lock is taken first: if
        it cannot be had within the lock timeout, the rule is refused (a note) and the pass
        runs without it."""
        by_tenant = self.settings.top_tenants > 0
        if policy.orphans is None:
            return db.measure(conn, target, edges, policy, by_tenant=by_tenant, heads=heads), policy
        orphans = policy.orphans
        try:
            with conn.transaction():
                try:
                    db.lock_shared(conn, orphans.ident)
                except pg_errors.LockNotAvailable as exc:
                    raise _AuthLocked from exc
                return db.measure(conn, target, edges, policy, by_tenant=True, heads=heads), policy
        except _AuthLocked:
            self._refuse(
                f"orphan rule refused: auth table "
                f"{locked_problem(self.settings, orphans.qualified)} during the measuring pass; "
                "the other rules go on"
            )
            policy = replace(policy, orphans=None)
            return db.measure(conn, target, edges, policy, by_tenant=by_tenant, heads=heads), policy

    def check_share(self, policy: db.Policy, tenants: list[db.TenantCounts]) -> db.Policy:
        """The policy with the rule's measured set, or without the rule when it would orphan
        too large a share of the tenants, or more than CLEANUP_MAX_ORPHAN_TENANTS."""
        s = self.settings
        self.orphaned = rules.orphaned_tenants(tenants)
        if policy.orphans is None:
            return policy
        candidates = sorted(
            t.tenant for t in tenants if t.without_auth and not t.fresh and t.tenant is not None
        )
        self.candidate_count = len(candidates)
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
            self._refuse(f"{refusal} It would have taken {would:,} keys." if would else refusal)
            return replace(policy, orphans=None)
        # The auth table looked sane: this run's candidates confirm the next run's.
        self.candidates = candidates
        if len(self.orphaned) > s.max_orphan_tenants:
            self._refuse(
                f"orphan rule refused: {len(self.orphaned):,} tenants are orphaned (no auth row, "
                f"no key touched for {s.orphan_grace_days}d, on two runs), above "
                f"CLEANUP_MAX_ORPHAN_TENANTS={s.max_orphan_tenants:,}; it would have taken "
                f"{would:,} keys. Check them, then raise the setting for one run"
            )
            return replace(policy, orphans=None)
        self.state = "applied"
        self._note_waiting(len(candidates) - len(self.orphaned))
        ids = tuple(t.tenant for t in self.orphaned if t.tenant is not None)
        return replace(policy, orphans=replace(policy.orphans, tenants=ids))

    def _note_waiting(self, waiting: int) -> None:
        """Candidates not yet confirmed: named in a note, for the next run."""
        if waiting <= 0:
            return
        s = self.settings
        self.notes.append(
            f"orphan rule: {waiting:,} tenant{'' if waiting == 1 else 's'} without an auth "
            f"row{_quiet(s)} recorded; to confirm, a run "
            f"at least {hours(ORPHAN_CONFIRM_AFTER)} later must find "
            f"{'it' if waiting == 1 else 'them'} so again before their keys go"
            + ("" if s.history_enabled and not self.flags.dry_run else " (a live run records)")
        )
