"""HTTP routes, one module per resource; each exposes `router`, included by `app.main.create_app`."""
