"""The output folder of one command (`query -o OUT`, `dedupe -o OUT`): all or nothing. (What
goes into the files is outputs.py and report.py.)

Every file goes to a temporary name first and is renamed into place only when the whole run has
succeeded, so a run that fails half way (a full disk, a write-protected folder) leaves the
previous outputs as they were and none of its own: its temporary files, the thumbnails it made
and the folder itself, if it made it, are removed. Errors name the path (see oserrors.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .oserrors import explain, is_user_fixable, make_folder, remove_quietly, writing


class RunOutputs:
    """with RunOutputs(out) as o: write to o.staged("matches.csv") ... (renamed into place on success)"""

    def __init__(self, folder: str | os.PathLike, where: str = "--output"):
        self.folder = Path(folder)
        self.where = where
        self.created_folder = False
        self._pending: list[tuple[str, Path]] = []  # (temporary file, final name)

    def __enter__(self) -> "RunOutputs":
        self.created_folder = make_folder(self.folder, self.where)
        return self

    def staged(self, name: str) -> Path:
        """A temporary file in the folder to write `name` into; it becomes `name` on commit."""
        with writing(self.folder / name, self.where):
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
        self._pending.append((tmp, self.folder / name))
        return Path(tmp)

    def commit(self) -> None:
        """Rename every pending file into place (the run succeeded)."""
        with writing(self.folder, self.where):
            for tmp, final in self._pending:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
                os.replace(tmp, final)
        self._pending.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
            return False
        self.discard()
        if isinstance(exc, OSError) and is_user_fixable(exc):
            # A write through an open file (a full disk mid-CSV) carries no file name: name the folder.
            raise explain(exc, self.folder, self.where) from None
        return False

    def discard(self) -> None:
        """Remove everything this run made: its temporary files, and the folder if it created it."""
        for tmp, _ in self._pending:
            remove_quietly(tmp)
        self._pending.clear()
        if self.created_folder:
            _remove_empty_tree(self.folder)


def _remove_empty_tree(folder: Path) -> None:
    """Remove `folder` and its sub-folders where nothing is left in them (bottom up)."""
    try:
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        folder.rmdir()
    except OSError:
        pass  # something is still there: keep it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["RunOutputs"]
