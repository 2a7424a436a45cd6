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


class Interrupted(RuntimeError):
    """Ctrl-C (or SIGTERM) during a long run; the work done so far is saved (exit 130, not an error)."""


__all__ = ["ConfigError", "ExportError", "IndexFolderError", "Interrupted", "ModelUnavailable", "UserError"]
