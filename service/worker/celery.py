"""The worker entry point for Celery's own command line: `celery -A service.worker.celery worker`.

Settings are read from the environment when Celery configures the app, not at import.
"""

from service.worker.app import create_celery

app = create_celery()
