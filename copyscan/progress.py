"""The progress display of long runs (index, query, bench synth): a rich bar with images/s and
an ETA, or a no-op with the same interface when switched off or when there is nothing to do."""

from __future__ import annotations

import time


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, label: str, unit: str = "img"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
        )
        self.task = self.progress.add_task(label, total=total, rate="")
        self.unit = unit
        self.start = time.perf_counter()
        self.done = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self.done += n
        rate = self.done / max(1e-9, time.perf_counter() - self.start)
        self.progress.update(self.task, advance=n, rate=f"{rate:6.1f} {self.unit}/s")


def progress_bar(enabled: bool, total: int, label: str, unit: str = "img"):
    """A context manager with `.advance(n)`: a bar when `enabled` and there is work, else a no-op."""
    return _RichBar(total, label, unit) if enabled and total else _NoBar()


class Throughput:
    """Images per second over a run, for summaries."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


__all__ = ["Throughput", "progress_bar"]
