"""sweepserve: the service around `ml/` (API, queue, worker, predictor, CLI)."""
