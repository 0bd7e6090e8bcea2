"""An app whose module raises while it is imported."""

raise RuntimeError("broken on purpose at import")
