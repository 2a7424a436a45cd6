"""The base class of errors a user's input causes: the CLI shows their message on one line and
exits 1. Anything else that escapes is a bug of ours (exit 2, traceback with COPYSCAN_DEBUG=1)."""


class UserError(ValueError):
    """Bad input (a folder with too few images, an unknown option value ...): say what to change."""
