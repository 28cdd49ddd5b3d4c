"""The store: documents, text, chunks and their full-text index, task runs, dead letters, redrives.

SQLite (WAL) by default, PostgreSQL through DOCPROC_DATABASE_URL, the same behaviour on both. Every
operation is written once, as a function of a synchronous SQLAlchemy connection; the worker calls
them directly and async code calls them through `AsyncStore`, which runs them in its threads
without blocking the event loop. Knows nothing of Celery or HTTP.
"""
