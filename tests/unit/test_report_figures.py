"""One declared list of the report's figures (handler.report.FIGURES) drives the log line, the
metrics, the Sentry context and the renderings; the engine's typed hand-offs fill the Report.
No database: these are the declarations and the renderings alone.
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from handler import report as report_module
from handler.deleteloop import LoopStats
from handler.measuring import MeasuredRun, RuleFigures
from handler.notify import sentry as sentry_notify
from handler.notify.html import render_summary, to_plain_text
from handler.observability import report_fields
from handler.report import FIGURES, Figure, Metric, Report, metric_values, render_text
from tests.support.notify import make_report


def test_every_report_field_is_declared_once_with_where_it_is_shown() -> None:
    names = [f.name for f in FIGURES]
    assert len(names) == len(set(names)), "a figure is declared twice"
    assert set(Report.model_fields) <= set(names), "a Report field is not in FIGURES"


def test_a_new_figure_is_one_line_and_reaches_every_place_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = Figure(
        "rows_per_batch",
        get=lambda r: r.deleted // max(1, r.batches),
        metric=Metric("RowsPerBatch"),
        shown=report_module.BOTH,
        label="rows per batch",
    )
    report = make_report(deleted=1_000_000, batches=40)
    monkeypatch.setattr(report_module, "FIGURES", (*FIGURES, extra))
    assert report_fields(report)["rows_per_batch"] == 25_000
    assert (Metric("RowsPerBatch"), 25_000) in metric_values(report)
    assert sentry_notify.figures(report)["rows_per_batch"] == 25_000
    assert "rows per batch: 25,000" in render_text(report)
    assert "rows per batch: 25,000" in to_plain_text(render_summary(report))


def test_figures_kept_out_of_sentry_stay_out_and_derived_counts_go_in() -> None:
    report = make_report()
    context = sentry_notify.figures(report)
    hidden = {f.name for f in FIGURES if not f.sentry}
    assert {"keys", "orphaned_tenant_ids", "top_tenants"} <= hidden
    assert not hidden & set(context)
    assert context["mode"] == "live"
    assert context["listed_keys"] == len(report.keys) + report.keys_omitted


def test_the_log_line_leaves_out_what_is_not_set() -> None:
    quiet = report_fields(make_report(reason=None, notes=[], orphan_rule="off"))
    assert not {"reason", "notes", "orphan_rule", "orphaned", "guard_triggered"} & set(quiet)
    loud = report_fields(make_report(reason="r", notes=["n"], orphan_rule="refused"))
    assert {"reason", "notes", "orphan_rule", "orphaned"} <= set(loud)


def test_unmeasured_sizes_feed_no_metric() -> None:
    names = {m.name for m, _ in metric_values(make_report(before=None, after=None))}
    assert not {"KeysTotal", "TotalBytes", "KeysAge0to1d"} & names


def test_a_run_that_measured_nothing_feeds_no_measured_count_as_a_zero() -> None:
    # Skipped for the lock or as a duplicate event: the table was never measured.
    skipped = make_report(
        status="skipped",
        before=None,
        after=None,
        eligible=0,
        protected=0,
        deleted=0,
        expires_column="expires_at",
        orphan_rule="applied",
    )
    names = {m.name for m, _ in metric_values(skipped)}
    measured = {"KeysEligible", "KeysProtected", "KeysExpired", "KeysKept", "KeysOrphaned"}
    assert not (measured | {"OrphanedTenants"}) & names, sorted(names)
    assert "KeysDeleted" in names  # nothing was deleted: that much is known
    logged = report_fields(skipped)
    assert not {"eligible", "protected", "expired", "orphaned", "orphaned_tenants"} & set(logged)
    # A run that measured keeps every count, zeros included.
    names = {m.name for m, _ in metric_values(make_report(expires_column="expires_at"))}
    assert {"KeysEligible", "KeysProtected", "KeysExpired", "KeysKept", "KeysOrphaned"} <= names


def test_the_loops_and_the_measurements_figures_are_report_fields() -> None:
    assert set(LoopStats().report_fields()) <= set(Report.model_fields)
    measured = {"cutoff", "started_at", "eligible", "protected"}
    declared = {f.name for f in fields(MeasuredRun)} | {f.name for f in fields(RuleFigures)}
    internal = {"policy", "now", "sizes", "leaves", "total", "rules", "by_type"}
    internal |= {"starts", "head_eligible"}  # the resume plan, for the loop (handler/resume.py)
    internal |= {"follows"}  # the loop's bound; reported among the kept keys
    assert (declared - internal) | measured <= set(Report.model_fields)
