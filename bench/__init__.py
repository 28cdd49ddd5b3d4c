"""docproc's benchmarks: every figure a ratio against a raw baseline measured in the same run.

`python -m bench` runs the whole set against the local RabbitMQ in a fresh vhost;
`python -m bench submit` (or process, deadletters, redrive, status, extraction, memory) runs one.
"""
