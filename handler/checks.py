"""Checks on the resolved target and the settings, before anything is measured.

A problem a live run must not go past raises ConfigError (a dry run notes it instead, where it
can); anything else is a note on the report.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from handler import db
from handler.settings import (
    BAILEYS_KEY_TYPES,
    DEFAULT_PROTECTED_KEY_TYPES,
    ConfigError,
    Flags,
    Settings,
)

# Zone names that PostgreSQL takes as fixed-offset abbreviations (pg_timezone_abbrevs), and an
# IANA zone that follows the daylight-saving rules the application most likely meant.
ZONE_FOR_ABBREVIATION = {
    "CET": "Europe/Berlin",
    "MET": "Europe/Berlin",
    "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}


def normalised_type(key_type: str) -> str:
    """`App_State_Sync Key` -> `app-state-sync-key`: how another spelling of a type compares."""
    return re.sub(r"[\s_]+", "-", key_type.strip().lower())


def resolve(conn: db.Conn, settings: Settings) -> db.Target:
    """The configured table and its columns, as found in the catalog; ConfigError if not."""
    s = settings
    schema, name = s.table_parts
    # TargetNotFound / TargetTypeError are ConfigErrors: they reach the caller as they are.
    return db.resolve_target(
        conn,
        schema,
        name,
        s.timestamp_column,
        s.key_type_column,
        s.timestamp_timezone,
        expires_column=s.expires_column,
        tenant_column=s.tenant_column,
        key_id_column=s.key_id_column,
        encoded=db.Encoded(s.key_column, s.value_column, s.creds_key, separator=s.session_separator)
        if s.layout == "encoded"
        else None,
    )


class TargetChecks:
    """One run's checks; notes go to the run's list."""

    def __init__(self, settings: Settings, flags: Flags, notes: list[str]) -> None:
        self.settings, self.flags, self.notes = settings, flags, notes

    def all(self, conn: db.Conn, target: db.Target) -> bool:
        """Every check before the lock; True when a dry run found that a live run would fail
        for a missing privilege."""
        self.rule_columns(target)
        if target.encoded is not None:
            # The types are parsed from the keys, as Baileys spells them: no other can match.
            self.misspelt_types(())
        self.untimed(target)
        self.zone_name(conn)
        self.timezone(target)
        return self.flags.dry_run and self.live_privileges(conn, target)

    def untimed(self, target: db.Target) -> None:
        """Without a timestamp the age rule is off: said in the report, every run."""
        if target.timestamp_column is not None:
            return
        self.notes.append(
            "CLEANUP_TIMESTAMP_COLUMN=none: the age rule is off (the table has no timestamp); "
            "only the pre-key window and, when on, the orphan rule delete keys"
            + (
                ", and the orphan rule has no grace to wait (no key's last use is known)"
                if self.settings.orphan_rule
                else ""
            )
        )

    def rule_columns(self, target: db.Target) -> None:
        s = self.settings
        if target.key_type_column is not None and target.key_id_column is None:
            raise ConfigError(
                f"column {s.key_id_column} does not exist in {target.qualified}: the key-lifecycle "
                "rules (pre-key window, own devices, sender keys) need the key id; set "
                "CLEANUP_KEY_ID_COLUMN"
            )
        if s.orphan_rule and not target.has_tenant:
            if s.tenant_column is None:
                raise ConfigError(
                    "the orphan rule (CLEANUP_ORPHAN_RULE) needs the session: set "
                    "CLEANUP_TENANT_COLUMN (or, encoded, CLEANUP_KEY_SESSION_SEPARATOR)"
                )
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

    def live_privileges(self, conn: db.Conn, target: db.Target) -> bool:
        """A dry run says when the same run live would fail, or lose its history, for a grant.

        A dry run needs only SELECT; without this, a role that cannot delete reports "would
        delete 4,117" and the first live run fails with permission denied.
        """
        s = self.settings
        history = s.history_table_parts if s.history_enabled else None
        fatal, lacking = db.missing_live_privileges(conn, target, history)
        if fatal:
            self.notes.append(
                "a live run would fail: this role lacks " + ", ".join(fatal) + " (see the grants "
                "in docs/safety.md#least-privilege)"
            )
        if lacking:
            self.notes.append(
                "a live run would not record its run history: this role lacks " + ", ".join(lacking)
            )
        return bool(fatal)

    def type_column_holds_types(self, target: db.Target, key_types: list[str | None]) -> bool:
        """False, with a note, when the configured column plainly holds no key types as Baileys
        spells them: none of the built-in protected types, and either no Baileys type at all
        (the wrong column, such as `key_id`) or a protected type spelt otherwise
        (`App-State-Sync-Key`). Protection would then match nothing, so a live run refuses
        (unless forced). A table of sessions and pre-keys alone (a new account) passes: its
        protected keys, once written, are spelt like the others. The column's values are not
        shown: a wrong column may hold secrets. Where it does hold Baileys' types, a configured
        type that is none of them and names no key is refused in a live run (misspelt_types)."""
        present = {t for t in key_types if t is not None}
        respelt = {t for t in present if normalised_type(t) in DEFAULT_PROTECTED_KEY_TYPES}
        if present & set(DEFAULT_PROTECTED_KEY_TYPES) or (
            present & BAILEYS_KEY_TYPES and not respelt
        ):
            # The column holds Baileys' types: a configured type of another name is a typo.
            self.misspelt_types(present)
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

    def misspelt_types(self, existing: Collection[str]) -> None:
        """A live run refuses a configured key type that Baileys never writes and that names
        no key in the table, where the table's types are Baileys' own: `sesion=90` or
        `sessions` would keep nothing it was meant to keep, and the default would delete.
        --force does not override (it is for the guard's numbers, not for a typo); a dry run
        goes on, its note on the unmatched type saying a live run refuses. A Baileys type the
        table holds no key of yet (no lid-mapping rows on a new account) passes."""
        if self.flags.dry_run:
            return
        problems = self.settings.misspelt_key_types(existing)
        if problems:
            raise ConfigError(
                "refusing a live run: "
                + "; ".join(problems)
                + "; it would keep nothing it was meant to keep: correct or unset it (a dry run "
                "only notes it; --force does not override)"
            )

    def zone_name(self, conn: db.Conn) -> None:
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

    def timezone(self, target: db.Target) -> None:
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
