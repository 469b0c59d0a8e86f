"""Two `make test` runs on one machine share nothing: each has a data folder and a database server of its own, and
cleans up after itself; a killed run's folder is removed by the next run, a live run's never."""

import os
import subprocess
import sys

from django.conf import settings

from config import embedded_postgres
from tests.run_folders import RUNS_FOLDER_NAME, remove_run_folder, stale_run_folders


def test_this_run_has_a_data_folder_and_a_database_server_of_its_own():
    folder = settings.DATA_DIR

    assert folder.parent.name == RUNS_FOLDER_NAME
    os.kill(int(folder.name), 0)  # named after this run's own (live) process
    server = embedded_postgres._load(folder)
    assert server is not None and embedded_postgres.is_running(folder)
    # The tenant databases of this run live on that server, not on one another run could reach by the same path.
    assert settings.TENANT_POSTGRES_SERVERS[0]["admin_url"] == server.dsn("postgres")
    assert settings.DATABASES["default"]["PORT"] == str(server.port)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_runs_folder_is_removed_and_a_live_runs_folder_is_kept(tmp_path):
    runs = tmp_path / RUNS_FOLDER_NAME
    killed = runs / str(_dead_pid())
    live = runs / str(os.getpid())
    other = runs / "not-a-run"
    for folder in (killed / "logs", live / "logs", other):
        folder.mkdir(parents=True)
    (killed / "logs" / "celery-worker.log").write_text("...")

    assert stale_run_folders(runs) == [killed]

    remove_run_folder(killed)
    assert sorted(path.name for path in runs.iterdir()) == sorted([live.name, "not-a-run"])
    assert stale_run_folders(runs) == []


def test_a_failed_run_keeps_only_its_logs(tmp_path):
    folder = tmp_path / RUNS_FOLDER_NAME / "12345"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "e2e-web.log").write_text("the reason")
    (folder / "media").mkdir()
    (folder / "secret_key").write_text("x")

    remove_run_folder(folder, keep_logs=True)

    assert [path.name for path in folder.iterdir()] == ["logs"]
    assert (folder / "logs" / "e2e-web.log").read_text() == "the reason"
