"""Each `make test` run keeps its state in a data folder of its own, `.data/test-runs/<pid>`, with its own embedded
PostgreSQL server in it: two runs on one machine never share tenant databases, so neither can drop the other's
(reconcile, erasure and the benchmarks' clean-up all drop databases they do not know). The pid is the run's shell,
which lives as long as the run. A run removes its folder when it ends; a killed run leaves its folder behind, and the
next run removes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from config import embedded_postgres

RUNS_FOLDER_NAME = "test-runs"


def is_run_folder(folder: Path) -> bool:
    return folder.parent.name == RUNS_FOLDER_NAME and folder.name.isdigit()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def stale_run_folders(runs_root: Path) -> list[Path]:
    """Folders of runs whose process is gone (killed, or crashed before cleaning up)."""
    if not runs_root.is_dir():
        return []
    return sorted(
        folder
        for folder in runs_root.iterdir()
        if folder.is_dir() and folder.name.isdigit() and not _process_alive(int(folder.name))
    )


def remove_run_folder(folder: Path, keep_logs: bool = False) -> None:
    """Stop the run's database server, then delete its folder (all of it, or all but its logs)."""
    if embedded_postgres.is_running(folder):
        embedded_postgres.stop(folder)
    if not keep_logs:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        if entry.name != "logs":
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
