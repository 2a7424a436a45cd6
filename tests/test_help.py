"""Help that a person can use: every option of every command shows its default (and the unit in
its text), nothing of the help text is eaten as markup ("Index folder ."), each command's help
has an example, and `copyscan models` reads at 80 columns with nothing cut."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO_ROOT

from copyscan.cli import app

# Options with nothing to default to: the help flag, and options that must be given.
NO_DEFAULT = {"--help"}


def _commands() -> list[tuple[list[str], object]]:
    root = typer.main.get_command(app)
    found = []

    def walk(cmd, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer's own click, not the click package)
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        else:
            found.append((path, cmd))

    walk(root, [])
    return found


COMMANDS = _commands()


def _help(path: list[str], width: int = 250) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width), "TERMINAL_WIDTH": str(width)})
    assert r.exit_code == 0, r.output
    return r.output


def _option_rows(text: str) -> dict[str, str]:
    """Option name -> its whole row in the rendered help (continuation lines joined)."""
    rows: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        cells = line.strip().strip("│").strip()
        m = re.match(r"^\*?\s*(--[\w-]+)", cells)
        if m:
            current = m.group(1)
            rows[current] = cells
        elif current and cells and line.lstrip().startswith("│") and not cells.startswith("-"):
            rows[current] += " " + cells
        elif line.lstrip().startswith("╰"):
            current = None
    return rows


def test_every_command_is_covered():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"index", "query", "dedupe", "models", "train", "eval", "calibrate", "export", "bench speed",
            "bench synth", "cache-teacher"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_every_default_and_an_example(path, cmd):
    text = _help(path)
    rows = _option_rows(text)
    for param in cmd.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        name = param.opts[0]  # the first name, as the help row begins
        if name in NO_DEFAULT or param.required:
            continue
        assert name in rows, f"{' '.join(path)}: {name} not found in the help:\n{text}"
        assert "[default:" in rows[name], f"{' '.join(path)} {name}: no default shown: {rows[name]}"
    # Markup that swallowed a bracketed note leaves " ." or " ;" behind.
    stray = [ln for ln in text.splitlines() if re.search(r"\w \.(\s|│|$)|\( ?\)|\s;\s*(│|$)", ln)]
    assert not stray, f"{' '.join(path)}: text lost in the help:\n" + "\n".join(stray)
    assert "Example" in text, f"{' '.join(path)}: no example in the help:\n{text}"


def test_models_reads_at_80_columns_with_nothing_cut():
    from copyscan.models import list_models

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "copyscan", "models"], capture_output=True, text=True, env=env,
                         timeout=120).stdout
    lines = out.splitlines()
    assert lines and max(len(ln) for ln in lines) <= 80, out
    assert "…" not in out and "..." not in out, out
    flat = " ".join(out.split())
    for m in list_models():
        for text in (m.name, m.license, m.requires, m.description, f"{m.dim}"):
            assert " ".join(text.split()) in flat, f"{text!r} cut or missing:\n{out}"
