"""infra/prometheus: a scrape config and alert rules Prometheus accepts, and alerts that fire
when they should (promtool's unit tests in alerts.test.yml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import ROOT, missing

PROMETHEUS = ROOT / "infra" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        missing("no promtool: `apt-get install prometheus` ships it (.ci/run installs it)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "infra/prometheus/prometheus.yml"),
        ("check", "rules", "infra/prometheus/alerts.yml"),
        ("test", "rules", "infra/prometheus/alerts.test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: tuple[str, ...]) -> None:
    checked = promtool(*args)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_the_brief_names_is_there() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}

    assert "by (reason" in alerts["DocprocDeadLettersArriving"]
    assert 'queue="docproc.dead_letter"' in alerts["DocprocDeadLetterConsumerDown"]
    assert "document_processing" in alerts["DocprocWorkQueueWithoutConsumer"]
    assert "deriv(docproc_queue_messages" in alerts["DocprocQueueGrowing"]
    assert "docproc_oldest_pending_task_seconds" in alerts["DocprocOldestPendingTask"]
    assert "docproc_redrive_items" in alerts["DocprocRedriveFailures"]
    assert "rabbitmq_alarms_memory_used_watermark" in alerts["RabbitMQMemoryAlarm"]
    assert "rabbitmq_alarms_free_disk_space_watermark" in alerts["RabbitMQDiskAlarm"]
