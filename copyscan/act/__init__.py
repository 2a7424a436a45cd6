"""Stage 8, act: move the copies a dedupe run found out of the folder, with a journal that undoes it.

    plan.py     which files to move, from OUT/groups.json, a decisions file and protected folders
    journal.py  the append-only, fsynced record of every move, written before the move
    files.py    moving one file without ever overwriting (same device, across devices, to the trash)
    run.py      carrying out a plan, and undoing a journal

Nothing here runs unless asked by `copyscan apply` / `copyscan undo` (or the API below).
"""

from .plan import Action, Plan, make_plan
from .run import ApplyResult, UndoResult, execute, undo

__all__ = ["Action", "ApplyResult", "Plan", "UndoResult", "execute", "make_plan", "undo"]
