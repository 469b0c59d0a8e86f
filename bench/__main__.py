"""Run the benchmarks: `python -m bench [SECTION ...] [--quick] [--list]` (what `make bench` calls).

BENCH_QUICK=1 (or --quick) runs the same measurements on smaller inputs. Results are merged into bench/results.json;
each section prints a table of its metrics, with PASS/FAIL against its targets. The exit status is 1 when a target
fails or a section crashes, so CI can gate on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from bench.framework import (
    RESULTS_PATH,
    load_section,
    merge_results,
    now_iso,
    print_flush,
    section_names,
    section_rows,
    setup_django,
    load_average,
    table,
)

HEADERS = ["section", "metric", "value", "target", "result"]


def _quick_from_environment() -> bool:
    return os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> int:
    available = section_names()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"run only these (of: {', '.join(available)})")
    parser.add_argument("--quick", action="store_true", help="smaller inputs (same as BENCH_QUICK=1)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    arguments = parser.parse_args(argv)
    if arguments.list:
        print("\n".join(available))
        return 0
    unknown = [name for name in arguments.sections if name not in available]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; available: {', '.join(available)}")
    quick = arguments.quick or _quick_from_environment()
    names = arguments.sections or available

    setup_django()
    print_flush(f"running {', '.join(names)}{' (quick)' if quick else ''}")

    all_rows: list[list[str]] = []
    failed_targets, crashed = 0, []
    for name in names:
        started = time.perf_counter()
        load_before = load_average()
        try:
            section = load_section(name)
            print_flush(f"\n== {name}: {section.title}")
            result = section.run(quick)
        except Exception:  # one broken section must not hide the others' figures; its traceback is printed
            traceback.print_exc()
            crashed.append(name)
            print_flush(f"{name}: CRASHED after {time.perf_counter() - started:.1f}s")
            all_rows.append([name, "(section crashed)", "", "", "FAIL"])
            continue
        elapsed = time.perf_counter() - started
        rows, verdicts = section_rows(section, result)
        failed_targets += verdicts.count(False)
        all_rows += rows
        print_flush(table(rows, HEADERS))
        print_flush(f"({name} took {elapsed:.1f}s)")
        # Written after every section, so a later crash keeps what was measured.
        run_record = {"quick": quick, "finished_at": now_iso(), "seconds": round(elapsed, 1)}
        # A shared 2-core machine under load skews every figure: keep the load next to them.
        run_record["load_average_before"] = load_before
        merge_results({name: result}, {name: run_record})

    print_flush("\n== summary")
    print_flush(table(all_rows, HEADERS))
    print_flush(f"results merged into {RESULTS_PATH}")
    if crashed:
        print_flush(f"crashed: {', '.join(crashed)}")
    if failed_targets:
        print_flush(f"{failed_targets} target(s) not met")
    return 1 if crashed or failed_targets else 0


if __name__ == "__main__":
    sys.exit(main())
