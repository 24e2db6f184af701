"""The HTTP API (FastAPI): `api.app.create_app()`, served by `saga api` (see `api.server`)."""
