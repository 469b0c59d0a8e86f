import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("silo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def enqueue(task_name: str, *args: object) -> None:
    """Queue a task by its registered name. Services enqueue this way rather than import their app's tasks module,
    which imports them: imports flow one way, tasks -> services. The task's own options (queue, retries) apply."""
    if task_name not in app.tasks:
        app.loader.import_default_modules()  # the autodiscovery a worker runs as it starts: imports the tasks modules
    app.tasks[task_name].delay(*args)
