"""What a run shows and records: one JSON line per step, and a rich progress display.

RUN_DIR/metrics.jsonl gets, per logged step: step, epoch, lr, each active loss (unweighted), the
weighted total, images/s of the whole run (all processes), seconds spent waiting for data, and
where the teacher's embeddings came from. A resumed run appends to the same file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: str, append: bool):
        self.path = os.path.join(run_dir, METRICS_FILE)
        if not append and os.path.exists(self.path):
            os.remove(self.path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, METRICS_FILE)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ProgressDisplay:
    """A progress bar with the latest losses and speed; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.progress = None
        if not enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, status="starting")
        self.progress.start()

    def update(self, step: int, record: dict[str, Any], losses: list[str]) -> None:
        if self.progress is None:
            return
        parts = [f"{name} {record[name]:.4f}" for name in ["loss", *losses] if name in record]
        parts.append(f"{record.get('images_per_s', 0.0):.1f} img/s")
        self.progress.update(self.task, completed=step, status="  ".join(parts))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
