"""Engines of the index job other than the local one (indexing.local_engine): each runs the
decode and embed stages somewhere else. Imported only when asked for (`--engine ray`)."""
