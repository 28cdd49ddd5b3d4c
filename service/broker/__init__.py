"""RabbitMQ from docproc's side: declaring the topology, checking it, reading the management API."""
