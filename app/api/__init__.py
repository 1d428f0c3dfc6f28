"""The HTTP API: the FastAPI app, every route, request and response bodies, auth and problems."""
