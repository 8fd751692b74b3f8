"""Rich progress bars with rate and ETA, shared by every long job."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(console: Console | None = None, *, transient: bool = False) -> Progress:
    """A progress bar: description, bar, n/total, percent, rate, elapsed, ETA, and a free ``info`` field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


def add_task(progress: Progress, description: str, total: float | None, info: str = "") -> int:
    """Add a task with the ``rate`` and ``info`` fields our columns expect."""
    return progress.add_task(description, total=total, rate="", info=info)


def update_rate(progress: Progress, task_id: int, unit: str = "it") -> None:
    """Refresh the ``rate`` field from rich's own speed estimate (items per second)."""
    task = progress.tasks[[t.id for t in progress.tasks].index(task_id)]
    speed = task.speed
    progress.update(task_id, rate=f"{speed:.1f} {unit}/s" if speed else "")
