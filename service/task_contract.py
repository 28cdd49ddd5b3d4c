"""The task contract between whoever publishes a task (API, beat, selftest, a stock Celery client)
and the worker: the task names, the queue each goes to, and the headers docproc adds.

Publishers import these instead of the Celery app, which only the worker loads.
"""

from service.topology import DOCUMENT_QUEUE, MAINTENANCE_QUEUE

PROCESS_DOCUMENT = "docproc.document.process"
EXPIRE_TASK_RUNS = "docproc.maintenance.expire_task_runs"
PURGE_DEAD_LETTERS = "docproc.maintenance.purge_dead_letters"
PUBLISH_UNPUBLISHED = "docproc.maintenance.publish_unpublished"
RECONCILE = "docproc.maintenance.reconcile"
RECONCILE_MARKER = "docproc.document.reconcile"
"""Sent by RECONCILE into document_processing, behind every document task published before it."""

CANARY_SUCCEED = "docproc.canary.succeed"
CANARY_FAIL = "docproc.canary.fail"
CANARY_FLAKY = "docproc.canary.flaky"
CANARY_CRASH = "docproc.canary.crash"
CANARY_SLEEP = "docproc.canary.sleep"
CANARY_STEPS = "docproc.canary.steps"

ROUTES: dict[str, str] = {
    "docproc.document.*": DOCUMENT_QUEUE,
    "docproc.canary.*": DOCUMENT_QUEUE,
    "docproc.maintenance.*": MAINTENANCE_QUEUE,
}
"""Which queue each task goes to, by name pattern: the worker's Celery routes are these."""


def queue_for(task: str) -> str:
    """The queue `task` is published to (see ROUTES)."""
    family = task.rsplit(".", 1)[0] + ".*"
    return ROUTES.get(family, MAINTENANCE_QUEUE)


# Headers a retried task carries (worker.base_task), read from its dead letter
# (deadletters.parsing).
REPUBLISHED_FROM_HEADER = "x-docproc-republished-from"
"""Lineage: the dead letter a re-published message came from."""
STORE_WAITS_HEADER = "x-docproc-store-waits"
"""How many of a task's retries were waits for the store (they do not count against the budget)."""
ERROR_TYPE_HEADER = "x-docproc-error-type"
"""The type of the task's last failure, so that its dead letter says why even if the store
could not record it."""
ERROR_MESSAGE_HEADER = "x-docproc-error-message"
PENDING_FAILURE_HEADER = "x-docproc-failure-pending"
"""Set on a retry whose task failed for good but could not record it: record, then dead-letter."""
ATTEMPT_HEADERS = frozenset(
    {STORE_WAITS_HEADER, ERROR_TYPE_HEADER, ERROR_MESSAGE_HEADER, PENDING_FAILURE_HEADER}
)
"""The state of a task's attempts so far: a re-published letter starts afresh, without them."""

DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
        "x-delivery-count",
    }
)
"""What RabbitMQ writes on a message it dead-letters (and a quorum queue on one it redelivers).
A message sent again without them: RabbitMQ < 4 reads them, and its cycle detection drops a
message that seems to loop through a queue without a rejection."""
