"""The runner's machinery: finding sections, checking targets, printing tables, merging results.json.

Nothing here imports Django at module level: `bench/__main__.py` configures the environment first.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = BENCH_DIR / "results.json"

# The order sections run and appear in results.json; a section module not listed here runs after these.
SECTION_ORDER = [
    "provisioning",
    "fleet_migration",
    "fleet_catalog",
    "ingest",
    "retrieval",
    "chat_overhead",
    "quality",
    "load",
    "archives",
]
NOT_SECTIONS = {"framework", "common"}


@dataclass(frozen=True)
class Target:
    """A threshold one metric of a section must meet: `at_most` and/or `at_least`."""

    metric: str
    at_most: float | None = None
    at_least: float | None = None
    label: str = ""  # what the row says; the metric's key when empty
    unit: str = ""

    def describe(self) -> str:
        bounds = []
        if self.at_least is not None:
            bounds.append(f">= {_format(self.at_least)}{self.unit}")
        if self.at_most is not None:
            bounds.append(f"<= {_format(self.at_most)}{self.unit}")
        return " and ".join(bounds)

    def check(self, value: Any) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if self.at_most is not None and value > self.at_most:
            return False
        return not (self.at_least is not None and value < self.at_least)


@dataclass
class Section:
    name: str
    module: ModuleType

    @property
    def title(self) -> str:
        doc = (self.module.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    @property
    def targets(self) -> list[Target]:
        return list(getattr(self.module, "TARGETS", []))

    def run(self, quick: bool) -> dict:
        result = self.module.run(quick)
        if not isinstance(result, dict):
            raise TypeError(f"bench.{self.name}.run() returned {type(result).__name__}, not a dict")
        return result


def _defines_run(name: str) -> bool:
    # Read, not imported: helper modules without a top-level `run` may live in bench/ too.
    try:
        tree = ast.parse((BENCH_DIR / f"{name}.py").read_text())
    except (OSError, SyntaxError):
        return True  # let the import report the problem
    return any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body)


def section_names() -> list[str]:
    """Every section module in bench/ (a module with a top-level `run`), in running order, without importing them."""
    found = [
        info.name
        for info in pkgutil.iter_modules([str(BENCH_DIR)])
        if not info.name.startswith("_")
        and info.name not in NOT_SECTIONS
        and not info.ispkg
        and _defines_run(info.name)
    ]
    known = [name for name in SECTION_ORDER if name in found]
    return known + sorted(name for name in found if name not in SECTION_ORDER)


def load_section(name: str) -> Section:
    module = importlib.import_module(f"bench.{name}")
    if not callable(getattr(module, "run", None)):
        raise LookupError(f"bench/{name}.py has no run(quick) function")
    return Section(name, module)


def setup_django() -> None:
    """Point Django at the benchmark's own data folder, main database, Redis db and queue, then migrate `default`.

    The Makefile sets the same variables; these defaults keep `python -m bench ...` run by hand off `make run`'s data.
    Idempotent, so a section module can call it to run alone.
    """
    from config.settings_paths import BASE_DIR

    os.environ.setdefault("SILO_DATA_DIR", str(BASE_DIR / ".data" / "bench"))
    os.environ.setdefault("SILO_EMBEDDED_FAST", "true")
    os.environ.setdefault("SILO_MAIN_DATABASE", "silo_bench")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("CELERY_QUEUE", f"silo-bench-{os.getpid()}")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # per-tenant INFO lines would drown the tables
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.apps import apps
    from django.conf import settings
    from django.core.management import call_command

    if apps.ready:
        return
    django.setup()
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    print_flush(
        f"main database {settings.DATABASES['default']['NAME']} on {settings.DATA_DIR} migrated "
        f"in {time.perf_counter() - started:.1f}s"
    )


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def merge_results(sections: dict[str, dict], runs: dict[str, dict], path: Path = RESULTS_PATH) -> dict:
    """Write these sections into results.json, keeping the sections other runs wrote."""
    try:
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, json.JSONDecodeError):
        existing = {}
    existing.update(sections)
    existing["machine"] = machine_info()
    existing.setdefault("runs", {}).update(runs)
    ordered = {name: existing[name] for name in SECTION_ORDER if name in existing}
    ordered.update({key: value for key, value in existing.items() if key not in ordered})
    path.write_text(json.dumps(ordered, indent=2, sort_keys=False) + "\n")
    return ordered


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- printing --------------------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != value:  # NaN: nothing was measured (e.g. every request failed)
            return "n/a"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        if abs(value) < 1:
            # Six significant digits near 1 (a cosine of 0.999952), three elsewhere (a share of 0.041).
            return f"{value:.6g}" if abs(value) > 0.999 else f"{value:.3g}"
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return json.dumps(value)[:60]
    return str(value)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    line = "  ".join("-" * width for width in widths)
    out = ["  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths, strict=False)), line]
    out += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(out)


def section_rows(section: Section, result: dict) -> tuple[list[list[str]], list[bool]]:
    """Rows for the section's table (every top-level metric) and whether each target passed."""
    targets = {target.metric: target for target in section.targets}
    rows, verdicts = [], []
    for metric, value in result.items():
        target = targets.get(metric)
        if target:
            passed = target.check(value)
            verdicts.append(passed)
            rows.append(
                [section.name, target.label or metric, _format(value), target.describe(), "PASS" if passed else "FAIL"]
            )
        elif not isinstance(value, dict | list):
            rows.append([section.name, metric, _format(value), "", ""])
    for metric, target in targets.items():
        if metric not in result:
            verdicts.append(False)
            rows.append([section.name, target.label or metric, "missing", target.describe(), "FAIL"])
    return rows, verdicts


def print_flush(*args: Any) -> None:
    print(*args, flush=True)
    sys.stderr.flush()
