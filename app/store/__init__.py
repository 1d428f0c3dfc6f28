"""The store: the database (the source of truth for jobs, trials and models), every statement
that changes it, and where checkpoint files live. Nothing here knows HTTP or PyTorch."""
