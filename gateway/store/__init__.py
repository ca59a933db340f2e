"""Image store: content-addressed blobs, the SQLite catalog, importers and version selection."""
