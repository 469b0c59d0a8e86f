import os
import threading

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("silo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
_tasks_import_lock = threading.Lock()


def enqueue(task_name: str, *args: object) -> None:
    """Queue a task by its registered name. Services enqueue this way rather than import their app's tasks module,
    which imports them: imports flow one way, tasks -> services. The task's own options (queue, retries) apply."""
    if task_name not in app.tasks:
        # The autodiscovery a worker runs as it starts: imports the tasks modules. Once, under a lock: a second thread
        # would otherwise find the import under way, skip it and look the task up before it is registered.
        with _tasks_import_lock:
            if task_name not in app.tasks:
                app.loader.import_default_modules()
    app.tasks[task_name].delay(*args)
