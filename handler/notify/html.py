"""Telegram HTML renderings of a Report: the run summary, the guard-abort alert, the failure alert.

Telegram's HTML parse mode knows a handful of tags and four named entities; everything
interpolated here goes through `esc()`. A message may hold at most 4096 characters after
entity parsing. We bound the raw HTML instead, measured in UTF-16 code units (how Telegram
counts), which is stricter, so no message is ever rejected for its length whatever the
size of the key listing: the listing and the per-type table are cut line by line to fit.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from handler.errors import ConfigError, error_text, refused
from handler.notify.secrets import redact
from handler.report import (
    BUCKET_LABELS,
    Report,
    TableStats,
    human_bytes,
    kept_lines,
    labelled_lines,
    limit_percent,
    listing_line,
    released_text,
    retention_label,
    share_percent,
    trend_lines,
)
from handler.settings import NotifySettings, Settings, format_validation_error

MAX_MESSAGE = 4096  # https://core.telegram.org/bots/api#sendmessage
_MAX_REASON = 500
_MAX_ERROR = 1500
_MAX_TYPE_NAME = 24
_BAR_WIDTH = 16
_MAX_TENANTS = 5  # tenant ids are identifiers: a short list, each clipped
# Notes shown before "… and N more notes": a run may carry dozens (45 made 5,340 characters).
_MAX_NOTES = 5
# A listed key's identifying columns, clipped: a 5,000-character tenant id must not take the
# whole listing's room.
_MAX_LISTING_KEY = 160

_STATUS_ICON = {"completed": "✅", "partial": "⚠️", "aborted": "🛑", "skipped": "⏭️"}
# Runs in a row ending partial having deleted nothing (Report.stalled): the job is stuck.
_STALLED_ICON = "❌"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def telegram_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utc(moment: datetime | None) -> str:
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


# The run's mode as every message shows it, by Report.mode ("dry_run" or "live").
_MODE_LABEL = {"dry_run": "🧪 DRY RUN", "live": "LIVE"}


def _mode(report: Report) -> str:
    return _MODE_LABEL[report.mode]


def _footer(report: Report, now: datetime | None) -> str:
    footer = f"🕒 {esc(_utc(now or report.started_at))}"
    if report.event_id:
        footer += f" · event <code>{esc(_clip(report.event_id, 80))}</code>"
    return footer


def _target(report: Report) -> str:
    line = f"Table <code>{esc(report.table)}</code>"
    if report.timestamp_column is None:
        # No key is deleted by age: no retention, no cutoff to claim (render_text says so too).
        return line + " · the age rule is off (no timestamp column)"
    line += f" · retention {report.retention_days} d"
    if report.cutoff is not None:
        line += f" · cutoff {esc(_utc(report.cutoff))}"
    return line


def _warns(report: Report, warning_threshold: int | None) -> bool:
    """More keys deleted than CLEANUP_WARNING_THRESHOLD: worth a look even when completed (the
    Sentry message is a warning then too)."""
    return warning_threshold is not None and report.deleted > warning_threshold


def _counts(report: Report, warning_threshold: int | None) -> str:
    if report.dry_run:
        total = "" if report.before is None else f" of {report.before.keys:,} keys"
        return f"<b>Would delete:</b> {report.eligible:,}{total} · protected {report.protected:,}"
    line = (
        f"<b>Deleted:</b> {report.deleted:,} of {report.eligible:,} eligible · "
        f"protected {report.protected:,}"
    )
    if _warns(report, warning_threshold):
        line += f" · above CLEANUP_WARNING_THRESHOLD ({warning_threshold:,})"
    return line


def _duration_line(report: Report) -> str:
    line = f"<b>Duration:</b> {esc(_duration(report.duration_ms))}"
    if report.batches:  # a dry run, or a live run with nothing to delete, has no batches
        line += f" · {report.batches:,} batches (longest {report.max_batch_ms:,} ms)"
    return line


def _rules(report: Report) -> str:
    """The TTL and orphan rules' counts, when either is in use; "" otherwise."""
    parts = []
    if report.expires_column is not None:
        parts.append(f"TTL expired {report.expired:,}")
    if report.orphan_rule == "applied":
        deleted = "" if report.dry_run else f" ({report.orphaned_deleted:,} deleted)"
        waiting = report.orphan_candidates - report.orphaned_tenants
        parts.append(
            f"orphaned {report.orphaned:,} keys of {report.orphaned_tenants:,} tenants{deleted}"
            + (f", {waiting:,} candidates for the next run" if waiting > 0 else "")
        )
    elif report.orphan_rule == "refused":
        parts.append("orphan rule refused (see note)")
    return f"<b>Rules:</b> {esc(' · '.join(parts))}" if parts else ""


def _tenant_rows(report: Report) -> tuple[str, list[str]]:
    tenants = report.top_tenants[:_MAX_TENANTS]
    names = [_clip(t.tenant or "(null)", _MAX_TYPE_NAME) for t in tenants]
    width = max([len("tenant"), *(len(n) for n in names)])
    header = esc(f"{'tenant':<{width}} {'keys':>9} {'eligible':>9} {'orphaned':>9}")
    rows = [
        esc(f"{name:<{width}} {t.keys:>9,} {t.eligible:>9,} {t.orphaned:>9,}")
        for name, t in zip(names, tenants, strict=True)
    ]
    return header, rows


def _keys(stats: TableStats | None) -> str:
    if stats is None:
        return "not measured"
    # After a live run the key count is before - deleted, not a recount: say so.
    return f"{stats.keys:,}" if stats.keys_counted else f"≈{stats.keys:,}"


def _size(stats: TableStats | None) -> str:
    return "not measured" if stats is None else human_bytes(stats.total_bytes)


def _sizes(report: Report) -> list[str]:
    before, after = report.before, report.after
    if report.dry_run:
        return [
            f"<b>Space:</b> a live run would make ≈{human_bytes(report.reclaimable_bytes)} "
            "reusable (estimated)",
            f"<b>Keys:</b> {_keys(before)} · <b>Size:</b> {_size(before)}",
        ]
    space = (
        f"<b>Space:</b> {esc(released_text(report))} · "
        f"reclaimable {human_bytes(report.reclaimable_bytes)} (estimated)"
    )
    if report.vacuumed:
        space += " · vacuumed"
    return [
        space,
        f"<b>Keys:</b> {_keys(before)} → {_keys(after)}",
        f"<b>Size:</b> {_size(before)} → {_size(after)}",
    ]


def _age_block(report: Report) -> str:
    if report.timestamp_column is None:
        return "<b>Ages</b>: no timestamp column, the age rule is off"
    counts = [report.age_distribution.get(label, 0) for label in BUCKET_LABELS]
    largest = max(counts, default=0)
    width = max(len(f"{c:,}") for c in counts) if counts else 1
    rows = []
    for label, count in zip(BUCKET_LABELS, counts, strict=True):
        bar = "█" * max(1, round(_BAR_WIDTH * count / largest)) if largest and count else ""
        rows.append(esc(f"{label:>6} {count:>{width},} {bar}".rstrip()))
    if report.no_timestamp:
        rows.append(esc(f"no timestamp: {report.no_timestamp:,} (never deleted)"))
    return "<b>Age distribution</b>\n<pre>" + "\n".join(rows) + "</pre>"


def _type_rows(report: Report) -> tuple[str, list[str]]:
    """The per-type table: an escaped header and one escaped line per key type."""
    names = {name: _clip(name, _MAX_TYPE_NAME) for name in report.by_type}
    name_w = max([len("type"), *(len(n) for n in names.values())])
    # A dry run's eligible keys are what a live run would delete.
    third = "would delete" if report.dry_run else "deleted"
    third_w = max(9, len(third) + 1)
    header = esc(f"{'type':<{name_w}} {'keys':>9} {third:>{third_w}}  retention")
    rows = []
    for name, stats in sorted(report.by_type.items(), key=lambda kv: (-kv[1].keys, kv[0])):
        amount = stats.eligible if report.dry_run else stats.deleted
        shown = "?" if amount is None else f"{amount:,}"  # not counted per type this run
        retention = retention_label(name, stats, age_rule=report.timestamp_column is not None)
        rows.append(
            esc(f"{names[name]:<{name_w}} {stats.keys:>9,} {shown:>{third_w}}  {retention}")
        )
    return header, rows


def _listing_rows(report: Report) -> list[str]:
    rows = []
    for entry in report.keys:
        age = "?" if entry.age_days is None else f"{entry.age_days:.1f}d"
        key = _clip(listing_line(entry, report.key_type_column), _MAX_LISTING_KEY)
        rows.append(esc(f"{key}  {age}"))
    return rows


def _note_lines(notes: Sequence[str], shown: int) -> list[str]:
    """The first `shown` notes, each clipped, and how many more there are."""
    lines = [f"Note: {esc(_clip(note, _MAX_REASON))}" for note in notes[:shown]]
    if len(notes) > shown:
        more = len(notes) - shown
        lines.append(esc(f"Note: … and {more:,} more note{'' if more == 1 else 's'} (in the logs)"))
    return lines


def _fit_lines(text: str, limit: int) -> str:
    """Whole lines from the top while they fit: the last resort for a tiny `limit`. Only for
    text whose lines each close their own tags (no <pre> block)."""
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        cost = telegram_len(line) + (1 if kept else 0)
        if used + cost > limit:
            break
        kept.append(line)
        used += cost
    return "\n".join(kept).rstrip("\n")


def _fit_pre(
    title: Callable[[int], str], header: str | None, rows: Sequence[str], total: int, budget: int
) -> str:
    """A title and a <pre> block holding as many of `rows` as fit in `budget` (UTF-16 units).

    Rows are cut whole, so no entity or tag is ever split; a last line says how many were
    left out of `total` (which exceeds len(rows) when the report itself was trimmed).
    `title(shown)` may name the count; it is sized with shown = total, its longest form.
    Returns "" when not even the title and the marker line fit.
    """
    pre_head = "<pre>" + (header + "\n" if header else "")
    pre_tail = "</pre>"

    def marker(left: int) -> str:
        return esc(f"… and {left:,} more")

    used = sum(telegram_len(part) + 1 for part in (title(total), pre_head, pre_tail))
    reserve = telegram_len(marker(total)) + 1
    if used + reserve > budget:
        return ""
    kept: list[str] = []
    for row in rows:
        cost = telegram_len(row) + 1
        if used + cost + reserve > budget:
            break
        kept.append(row)
        used += cost
    left = total - len(kept)
    lines = [*kept, marker(left)] if left > 0 else kept
    if not lines:
        return ""
    return title(len(kept)) + "\n" + pre_head + "\n".join(lines) + pre_tail


def _assemble(parts: Sequence[str]) -> str:
    return "\n\n".join(part for part in parts if part)


def _table_block(title: str, table: tuple[str, list[str]], budget: int) -> str:
    """A titled table in a <pre> block, rows dropped from the end to fit `budget`."""
    header, rows = table
    return _fit_pre(lambda _: f"<b>{title}</b>", header, rows, len(rows), budget)


def render_summary(
    report: Report,
    *,
    now: datetime | None = None,
    limit: int = MAX_MESSAGE,
    warning_threshold: int | None = None,
) -> str:
    """The run summary as Telegram HTML, at most `limit` UTF-16 code units long.

    With `warning_threshold` (CLEANUP_WARNING_THRESHOLD), a run that deleted more keys than
    that carries ⚠️ instead of ✅; so does a dry run that found the safety guard would stop a
    live run, or that a live run would fail.
    """
    # Fewer notes until the whole summary fits; else the essentials with as many notes as
    # fit; then, for a tiny `limit`, whole lines from the top.
    header_lines = _header_lines(report, warning_threshold)
    heads = [
        "\n".join([*header_lines, *_note_lines(report.notes, shown)])
        for shown in range(min(len(report.notes), _MAX_NOTES), -1, -1)
    ]
    text = ""
    for essentials in (False, True):
        for head in heads:
            text = _summary_parts(
                report,
                head,
                now=now,
                limit=limit,
                threshold=warning_threshold,
                essentials=essentials,
            )
            if telegram_len(text) <= limit:
                return text
    return _fit_lines(text, limit)


def _header_lines(report: Report, warning_threshold: int | None) -> list[str]:
    """The title with the status icon, the target, and why the run ended as it did."""
    icon = _STATUS_ICON.get(report.status, "•")
    # A completed run that deleted a lot, or a dry run that found the guard would stop a live
    # run or that a live run would fail (Sentry: warning; CLI: exit 3 or 4), is no ✅.
    if report.status == "completed" and (
        _warns(report, warning_threshold) or report.stopped_by_guard or report.live_run_would_fail
    ):
        icon = _STATUS_ICON["partial"]
    if report.stalled:
        icon = _STALLED_ICON
    lines = [
        f"{icon} <b>WhatsApp keys cleanup</b> · <b>{esc(_mode(report))}</b> · {esc(report.status)}",
        _target(report),
    ]
    if report.stalled:
        lines.append(
            f"<b>Stuck:</b> {report.stalled_runs:,} runs in a row ended partial having deleted "
            "nothing"
        )
    if report.reason:
        lines.append(f"Reason: {esc(_clip(report.reason, _MAX_REASON))}")
    return lines


def _summary_parts(
    report: Report,
    head: str,
    *,
    now: datetime | None,
    limit: int,
    threshold: int | None,
    essentials: bool,
) -> str:
    """The summary under `head`: the figures, the age block, then the per-type table, the top
    tenants and the listing as far as they fit; with `essentials`, the figures alone."""
    figures = [
        _counts(report, threshold),
        *filter(None, [_rules(report)]),
        *(f"<b>Kept</b> {esc(_clip(line, _MAX_REASON))}" for line in kept_lines(report)),
        _duration_line(report),
        *(esc(_clip(line, _MAX_REASON)) for line in labelled_lines(report, "telegram")),
        *_sizes(report),
        "<b>Trend:</b> " + esc(" · ".join(trend_lines(report.trend))),
    ]
    if report.status == "skipped":
        # Nothing was measured or touched: the reason is the message.
        return _assemble([head, _footer(report, now)])
    body = "\n".join(figures)
    footer = _footer(report, now)
    if essentials:
        return _assemble([head, body, footer])
    age = _age_block(report)

    fixed = _assemble([head, body, age, footer])
    # Separators ("\n\n") for the two optional blocks are counted in their budget.
    budget = limit - telegram_len(fixed) - 4
    types_block = _table_block("By key type", _type_rows(report), budget) if report.by_type else ""
    budget -= telegram_len(types_block)
    tenants_block = (
        _table_block("Top tenants", _tenant_rows(report), budget) if report.top_tenants else ""
    )
    budget -= telegram_len(tenants_block)
    listing_block = ""
    total_keys = len(report.keys) + report.keys_omitted
    if total_keys:
        name = "Keys that would be deleted" if report.dry_run else "Deleted keys"
        listing_block = _fit_pre(
            lambda shown: f"<b>{name}</b> ({shown:,} of {total_keys:,})",
            None,
            _listing_rows(report),
            total_keys,
            budget,
        )
    return _assemble([head, body, age, types_block, tenants_block, listing_block, footer])


def render_guard_abort(report: Report, settings: Settings, *, now: datetime | None = None) -> str:
    """The alert for a run the safety guard stopped: its numbers and how to override it."""
    total = report.before.keys if report.before is not None else None
    # Of the whole table, as the guard compares it; never rounded onto the limit.
    share = share_percent(report.eligible / total, settings.max_delete_fraction) if total else "n/a"
    lines = [
        "🛑 <b>WhatsApp keys cleanup aborted by the safety guard</b>"
        f" · <b>{esc(_mode(report))}</b>",
        _target(report),
    ]
    if report.reason:
        lines.append(f"Reason: {esc(_clip(report.reason, _MAX_REASON))}")
    lines += [
        f"<b>Eligible:</b> {report.eligible:,} of "
        f"{'not measured' if total is None else f'{total:,}'} keys ({esc(share)}) · "
        f"protected {report.protected:,}",
        *filter(None, [_rules(report)]),
        f"<b>Limit:</b> {limit_percent(settings.max_delete_fraction)} of the table "
        f"(CLEANUP_MAX_DELETE_FRACTION={esc(settings.max_delete_fraction)}), "
        f"applied from {settings.guard_min_keys:,} keys (CLEANUP_GUARD_MIN_KEYS)",
        "Nothing was deleted.",
    ]
    override = "\n".join(
        [
            "If this deletion is expected, override the guard for one run:",
            '• Lambda event: <code>{"dry_run": false, "force": true}</code>',
            "• CLI: <code>keys-cleanup --execute --force</code>",
        ]
    )
    return _assemble(["\n".join(lines), _age_block(report), override, _footer(report, now)])


def render_failure(
    exc: BaseException, settings: NotifySettings, *, mode: str, now: datetime | None = None
) -> str:
    """The alert for a run that raised: its mode (`dry_run` or `live`, as Report.mode), the
    exception type and message, redacted and escaped. With only the notifiers' settings (the
    full ones failed to load) the table is unknown, and nothing was deleted."""
    message = _clip(redact(error_text(exc)).strip() or "(no message)", _MAX_ERROR)
    where = f"environment {esc(settings.sentry_environment)}"
    if isinstance(settings, Settings):
        where = f"Table <code>{esc(settings.table)}</code> · {where}"
    if not isinstance(settings, Settings):
        outcome = "The settings did not load: nothing was deleted."
    elif refused(exc):
        outcome = "The run was refused before it began: nothing was deleted."
    elif mode == "live":
        outcome = (
            "Batches committed before the failure stay deleted; the next run picks up the rest."
        )
    else:
        outcome = "A dry run deletes nothing."
    return _assemble(
        [
            "\n".join(
                [
                    "🚨 <b>WhatsApp keys cleanup failed</b>"
                    f" · <b>{esc(_MODE_LABEL.get(mode, mode))}</b>",
                    where,
                ]
            ),
            f"<code>{esc(type(exc).__name__)}</code>: {esc(message)}",
            f"{outcome} The traceback is in the logs and in Sentry.",
            f"🕒 {esc(_utc(now))}",
        ]
    )


def to_plain_text(message: str) -> str:
    """The message as a Telegram client displays it: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"</?[a-z][^>]*>", "", message))


def main(argv: Sequence[str] | None = None) -> int:
    """Preview the Telegram summary of a report: `keys-cleanup --json ... | python -m
    handler.notify [--html]`. Prints the text as displayed, or the HTML sent."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m handler.notify",
        description="Render a report (JSON, as `keys-cleanup --json` prints it) as the "
        "Telegram summary.",
    )
    parser.add_argument("report", nargs="?", help="report JSON file (default: stdin)")
    parser.add_argument("--html", action="store_true", help="print the HTML that is sent")
    args = parser.parse_args(argv)
    try:
        report = _read_report(args.report)
        threshold = Settings.from_env().warning_threshold
    except ConfigError as exc:  # one line naming the problem, never the input's values
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
    message = render_summary(report, warning_threshold=threshold)
    sys.stdout.write((message if args.html else to_plain_text(message)) + "\n")
    return 0


def _read_report(path: str | None) -> Report:
    """The report from `path` (or stdin), or a ConfigError saying why it is none."""
    where = path or "stdin"
    try:
        if path:
            with open(path, encoding="utf-8") as source:
                raw = source.read()
        else:
            raw = sys.stdin.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    try:
        json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{where} is not JSON ({exc.msg}, line {exc.lineno}): pipe in `keys-cleanup --json`"
            if isinstance(exc, json.JSONDecodeError)
            else f"{where} is not JSON: pipe in `keys-cleanup --json`"
        ) from None
    try:
        return Report.model_validate_json(raw)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        if len(problems) > 300:
            problems = problems[:300] + " ..."
        raise ConfigError(
            f"{where} is JSON but not a report ({exc.error_count()} problems: {problems}): "
            "pipe in `keys-cleanup --json`"
        ) from None
