"""The Celery app class docproc runs — it knows its Settings and this process's store — and the
typed way for a task to reach them (Celery types `task.app` as a plain Celery)."""

from __future__ import annotations

import os
from typing import Any, cast

from celery import Celery, Task

from service.settings import Settings
from service.store.database import Store


class DocprocCelery(Celery):
    """A Celery app that knows its docproc Settings and the store of the current process."""

    _docproc_settings: Settings | None = None
    _store: Store | None = None
    _store_pid: int | None = None
    migrated = False

    @property
    def settings(self) -> Settings:
        if self._docproc_settings is None:
            _ = self.conf  # configuring reads the settings (see create_celery)
        assert self._docproc_settings is not None
        return self._docproc_settings

    @property
    def store(self) -> Store:
        """This process's store: created on first use, again after a fork (pool processes)."""
        if self._store is None or self._store_pid != os.getpid():
            self._store = Store(self.settings.resolved_database_url)
            self._store_pid = os.getpid()
        return self._store


def app_of(task: Task[Any, Any]) -> DocprocCelery:
    """The docproc app a task runs in."""
    return cast("DocprocCelery", task.app)
