"""The process measure's account of CPU by part of the chain (worker, pool, broker, bench)."""

from __future__ import annotations

import os

from bench.harness import local_broker_pids
from bench.process import Batch, chain_cpu


def batch(**cpu: float) -> Batch:
    return Batch(spans=[(0.0, 1.0)], processes=2, cpu=cpu)


def test_each_part_is_given_document_over_no_op_as_medians_then_the_median_round_sum() -> None:
    documents = [
        batch(pool=2000, broker=800),
        batch(pool=2200, broker=900),
        batch(pool=9000, broker=850),
    ]
    noops = [batch(pool=700, broker=750), batch(pool=650, broker=700), batch(pool=720, broker=760)]

    assert chain_cpu(documents, noops) == "pool 2200 / 700, broker 850 / 750, all 3100 / 1450"


def test_the_local_broker_is_found_by_its_erlang_vm() -> None:
    # The suite's RabbitMQ runs on this machine (infra/rabbitmq/local.sh), as the bench's does.
    pids = local_broker_pids()

    assert pids, "no beam.smp process: RabbitMQ is not running here"
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids)
