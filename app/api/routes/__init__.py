"""One module per resource; each holds its routes and nothing else (no SQL, no files)."""
