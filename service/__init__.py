"""docproc: an async document-processing service on Celery and RabbitMQ."""
