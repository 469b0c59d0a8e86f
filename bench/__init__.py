"""Silo's benchmark suite: `make bench` (or `BENCH_QUICK=1 make bench`, or `python -m bench SECTION ...`).

Adding a section is one new module here, named after the section's key in results.json (e.g. `bench/ingest.py`):

    '''What it measures, in one line (shown as the section's heading).'''
    from bench.framework import Target

    TARGETS = [Target("p50_ms", at_most=250, label="p50 ingest latency")]

    def run(quick: bool) -> dict:
        ...  # set up, measure, clean up (in `finally`); `quick` means smaller inputs, same measurements
        return {"p50_ms": 123.4, ...}

The runner finds the module by itself (`bench.framework.discover_sections`); sections run in the order of
`framework.SECTION_ORDER`, unknown ones after it alphabetically. Modules whose names start with `_`, and the helper
modules `framework` and `common`, are not sections. Django is set up before any section is imported, against the
benchmark's own data folder and main database (see `bench/__main__.py`), so sections import models and services at
module level as application code does. Helpers for sections (users, tenant clean-up, percentiles) are in
`bench/common.py`.
"""
