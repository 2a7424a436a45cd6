"""The commands that act on a dedupe run: `apply`, `undo`, `review`. cli.py registers them on its
app with `register(app, run=..., esc=..., out=..., err=...)` (its error handling, escaping and
consoles), so that this module never imports cli.py.

Kept apart from cli.py: they are the only commands that change a user's folders, so their
safety rules read in one place. Like cli.py, nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Optional

import typer



def _human(n: int) -> str:
    from .report import human_bytes

    return human_bytes(n)


def register(app: typer.Typer, *, run, esc, out, err) -> None:
    """Add apply, undo and review to `app`; `run(fn, ...)` calls fn turning user errors into one
    line and exit 1, `esc` makes a path printable, `out`/`err` are the consoles."""
    _run, _esc = run, esc  # the names the command bodies use

    @app.command()
    def apply(
        dedupe_out: Path = typer.Argument(..., metavar="DEDUPE_OUT", help="Output folder of `copyscan dedupe` (holds groups.json).", show_default=False),
        move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move the copies here, under their path relative to the deduped folder \\[default: none: give this or --trash].", show_default=False),
        trash: bool = typer.Option(False, "--trash", help="Send the copies to the desktop trash (freedesktop) instead of --move-to \\[default: off].", show_default=False),
        decisions: Optional[Path] = typer.Option(None, "--decisions", help="Decisions file (group_id,path,decision) \\[default: DEDUPE_OUT/decisions.csv if present, from `copyscan review`].", show_default=False),
        protect: Optional[list[Path]] = typer.Option(None, "--protect", help="A folder whose files are never moved; repeatable (those given to dedupe count too) \\[default: none].", show_default=False),
        journal: Optional[Path] = typer.Option(None, "--journal", help="Where to write the journal \\[default: DEDUPE_OUT/journal-TIME.jsonl].", show_default=False),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and change nothing \\[default: off].", show_default=False),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation \\[default: off: ask].", show_default=False),
        show: int = typer.Option(20, "--show", help="Moves to list in the printed plan (all are in the journal)."),
    ) -> None:
        """Move the copies found by `dedupe` out of the folder (never a kept or protected file), with a journal for `undo`.

        Examples:

        copyscan apply copyscan-dedupe --move-to ../dupes --dry-run

        copyscan apply copyscan-dedupe --trash --yes
        """
        from .act import execute, make_plan
        from .groups_file import DECISIONS_CSV, read_decisions, read_dedupe_output
        from .review_memory import remember

        run = _run(read_dedupe_output, dedupe_out)
        chosen = decisions if decisions is not None else (dedupe_out / DECISIONS_CSV if (dedupe_out / DECISIONS_CSV).exists() else None)
        decided = _run(read_decisions, chosen, run) if chosen is not None else []
        plan = _run(make_plan, run, decided, move_to=move_to, trash=trash, protect=[str(p) for p in protect or []])
        where = "to the trash" if plan.mode == "trash" else f"to {_esc(plan.move_to)}"
        out.print(f"plan: move [bold]{len(plan.actions)}[/] files ({_human(plan.bytes)}) {where}; "
                  f"{len(plan.kept)} kept, {len(plan.left)} left in place"
                  + (f"; decisions from {_esc(str(chosen))}" if chosen else ""))
        for a in plan.actions[:show]:
            out.print(f"  group {a.group_id}: {_esc(a.src)}" + (f" -> {_esc(a.dst)}" if a.dst else ""))
        if len(plan.actions) > show:
            out.print(f"  ... and {len(plan.actions) - show} more")
        for path, why in plan.left[:show]:
            out.print(f"  [yellow]stays[/] {_esc(path)}: {_esc(why)}")
        if dry_run or not plan.actions:
            out.print("dry run: nothing was moved" if dry_run else "nothing to move")
            return
        if not yes:
            if not sys.stdin.isatty():
                err.print("[red]error:[/] not a terminal to confirm on: add --yes to move these files, or --dry-run to look only")
                raise typer.Exit(1)
            if not typer.confirm(f"Move these {len(plan.actions)} files?", default=False):
                out.print("nothing was moved")
                raise typer.Exit(1)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        journal_path = journal or dedupe_out / f"journal-{stamp}-{os.getpid()}.jsonl"
        res = _run(execute, plan, journal_path)
        remember(run, decided)
        out.print(f"moved [bold]{len(res.moved)}[/] files, {_human(res.bytes_freed)} freed")
        for path, why in res.left:
            out.print(f"  [yellow]left alone[/] {_esc(path)}: {_esc(why)}")
        out.print(f"journal: {_esc(res.journal)}  (undo with: copyscan undo {_esc(res.journal)})")

    @app.command()
    def undo(
        journal: Path = typer.Argument(..., metavar="JOURNAL", help="A journal written by `copyscan apply`.", show_default=False),
    ) -> None:
        """Put back every file an `apply` moved, with its bytes and modification time.

        Examples:

        copyscan undo copyscan-dedupe/journal-20261203-101500-4242.jsonl
        """
        from .act import undo as run_undo

        res = _run(run_undo, journal)
        out.print(f"restored [bold]{res.restored}[/] files" + (f", {res.already} were already in place" if res.already else ""))
        for path, why in res.problems:
            err.print(f"[yellow]{_esc(path)}[/]: {_esc(why)}")
        if res.problems:
            raise typer.Exit(1)

    @app.command()
    def review(
        dedupe_out: Path = typer.Argument(..., metavar="DEDUPE_OUT", help="Output folder of `copyscan dedupe`.", show_default=False),
        port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1; 0 takes any free one."),
        browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page in the default browser."),
    ) -> None:
        """Click through the groups on a local page: change the kept image, mark false matches; saves DEDUPE_OUT/decisions.csv.

        Examples:

        copyscan review copyscan-dedupe

        copyscan review copyscan-dedupe --port 8765 --no-browser
        """
        import time

        from .review import start

        server = _run(start, dedupe_out, port)
        out.print(f"review at [bold]{server.url}[/] (Ctrl-C to stop); decisions go to {_esc(str(dedupe_out / 'decisions.csv'))}")
        if browser:
            import webbrowser

            webbrowser.open(server.url)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            server.stop()
            out.print("review stopped")
