"""copyscan: find copies of images in bulk.

The pipeline, one module per stage: discover -> decode -> embed -> store -> ann (FAISS) ->
search -> group -> report. The functions below are the public API; the CLI calls them.
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    DEFAULT_THRESHOLD,
    DedupeSummary,
    IndexSummary,
    QuerySummary,
    dedupe,
    default_index_dir,
    index_folder,
    load_index,
    query_folder,
)
from .models import DEFAULT_MODEL, create_model, list_models, register_model  # noqa: E402

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_THRESHOLD", "DedupeSummary", "IndexSummary", "QuerySummary", "__version__", "create_model",
    "dedupe", "default_index_dir", "index_folder", "list_models", "load_index", "query_folder", "register_model",
]
