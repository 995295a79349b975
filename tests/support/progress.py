"""Progress callbacks of the engine tests: something happens while a run is under way."""

from __future__ import annotations

from collections.abc import Callable

from handler.deleteloop import Progress


class AfterFirstBatch:
    """A progress callback that runs `action` once, after the run's first batch; `seen` holds the
    Progress it was called with (empty: the run never finished a batch)."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.seen: list[Progress] = []

    def __call__(self, p: Progress) -> None:
        if not self.seen:
            self.action()
            self.seen.append(p)
