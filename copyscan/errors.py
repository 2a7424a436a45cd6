"""Every error a user's input can cause, under one base class, `UserError`: the CLI shows its
message on one line and exits 1. Anything else that escapes is a bug of ours (exit 2, traceback
with COPYSCAN_DEBUG=1). Torch-free, so that the CLI can catch these before a model is loaded.

Errors that belong to one stage (PostProcessError, MetricsError, SynthError) live in that stage's
module and derive from UserError too; the ones several modules raise live here.
"""


class UserError(ValueError):
    """Bad input (a folder with too few images, an unknown option value ...): say what to change."""


class IndexFolderError(UserError):
    """An index folder that cannot be used as asked; the message says why and what to do."""


class ModelUnavailable(UserError):
    """A model that cannot be loaded here: the message says what to install or where to put what."""


class ExportError(ModelUnavailable):
    """An ONNX export that cannot be done here; the message says why and what to do."""


class ConfigError(UserError):
    """A training setting (option or recipe entry) that cannot be used; the message names it."""


class WriteError(UserError):
    """A file or folder that could not be written (a full disk, a write-protected or read-only
    folder, a file where a folder should be); the message names it and says what to do. Made
    from the OSError by oserrors.explain."""

    def __init__(self, message: str, path: str = "", code: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = code


class WorkerLost(UserError):
    """A decode worker process that died under the run (killed, out of memory): not bad input,
    but nothing of ours to fix either; the message says the run resumes where it stopped."""


class Interrupted(RuntimeError):
    """Ctrl-C (or SIGTERM) during a long run; the work done so far is saved (exit 130, not an error)."""


__all__ = ["ConfigError", "ExportError", "IndexFolderError", "Interrupted", "ModelUnavailable", "UserError", "WorkerLost",
           "WriteError"]
