"""The HTTP API (FastAPI): `api.app.create_app()`, served by `python -m service api` (see `api.server`)."""
