"""copyscan: find copies of images in bulk.

The pipeline, one module per stage (see ARCHITECTURE.md):
discover -> decode -> embed -> store -> index (FAISS) -> search -> group -> report.
The names below are the public API (copyscan.api); the CLI calls them. They load on first use,
so `import copyscan` (and the CLI's start-up) costs no torch, FAISS or Arrow.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

# Public name -> the module that defines it, imported on first access (PEP 562).
_EXPORTS = {
    "DEFAULT_THRESHOLD": "api", "DedupeSummary": "api", "Extraction": "api", "IndexSummary": "api",
    "QuerySummary": "api", "dedupe": "api", "default_index_dir": "api", "index_folder": "api",
    "load_index": "api", "query_folder": "api",
    "DEFAULT_MODEL": "models", "create_model": "models", "list_models": "models", "register_model": "models",
    "UserError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted([*_EXPORTS, "__version__"])
