import os
import threading

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("silo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
_tasks_import_lock = threading.Lock()


def provisioning_queue(default_queue: str) -> str:
    return f"{default_queue}-provisioning"


def route_provisioning_task(name: str, args, kwargs, options, task=None, **extra) -> dict | None:
    """tenants' tasks go to the provisioning queue named after the default queue of the moment, not of start-up:
    whoever points the default queue elsewhere (a worker set up for another provider) takes provisioning with it."""
    if name.startswith("tenants.tasks."):
        return {"queue": provisioning_queue(app.conf.task_default_queue)}
    return None


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
