"""`sweepserve`: the command line (server, worker, migrations, and an HTTP client)."""
