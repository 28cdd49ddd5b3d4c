"""Everything that knows about Celery: the app, its task base, retry policy, signals and canaries.

Start a worker with `docproc serve worker` or `celery -A service.worker.celery worker`.
"""
