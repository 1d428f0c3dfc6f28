"""Pure PyTorch: data, models, training engine, search-space expansion, checkpoint I/O.

Never imports `app`; usable from a notebook.
"""
