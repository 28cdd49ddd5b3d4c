"""The HTTP API (Litestar), async end to end: `create_app(settings)`, served by `serve api`."""
