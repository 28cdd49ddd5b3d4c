"""Task names: the contract between whoever publishes a task (API, beat, CLI) and the worker.

Publishers import these instead of the Celery app, which only the worker loads.
"""

PROCESS_DOCUMENT = "docproc.document.process"
EXPIRE_TASK_RUNS = "docproc.maintenance.expire_task_runs"
PURGE_DEAD_LETTERS = "docproc.maintenance.purge_dead_letters"
PUBLISH_UNPUBLISHED = "docproc.maintenance.publish_unpublished"

CANARY_SUCCEED = "docproc.canary.succeed"
CANARY_FAIL = "docproc.canary.fail"
CANARY_FLAKY = "docproc.canary.flaky"
CANARY_CRASH = "docproc.canary.crash"
CANARY_SLEEP = "docproc.canary.sleep"
CANARY_STEPS = "docproc.canary.steps"
