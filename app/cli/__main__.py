"""`python -m app.cli ...` is `sweepserve ...` (the server starts its workers this way)."""

import sys

from app.cli.main import main

sys.exit(main())
