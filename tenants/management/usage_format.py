"""How `tenants usage` and `tenants list` show usage against limits, as text."""

from __future__ import annotations

USAGE_COLUMNS_HEADER = f"{'plan':<10} {'pages/mo':>13} {'questions/day':>13} {'storage':>9}"


def _of(used: int, limit: int | None) -> str:
    return f"{used:,}/{'∞' if limit is None else f'{limit:,}'}"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("k", 1024)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value}B"


def usage_columns(report: dict | None) -> str:
    if report is None:
        return "-"
    limits = report["limits"]
    return (
        f"{report['plan']:<10} {_of(report['pages_this_month'], limits['pages_per_month']):>13} "
        f"{_of(report['questions_today'], limits['questions_per_day']):>13} {_size(report['storage_bytes']):>9}"
    )


def usage_table(reports: list[dict]) -> str:
    lines = [
        f"{'workspace':<32} {'plan':<10} {'documents':>9} {'pages/mo':>13} {'questions/day':>13} {'tokens/mo':>19} "
        f"{'storage':>9} {'cost $':>8}  status"
    ]
    for report in reports:
        limits = report["limits"]
        status = "neon suspended (over quota)" if report["neon_suspended"] else "ok"
        lines.append(
            f"{report['workspace']:<32} {report['plan']:<10} {_of(report['documents'], limits['documents']):>9} "
            f"{_of(report['pages_this_month'], limits['pages_per_month']):>13} "
            f"{_of(report['questions_today'], limits['questions_per_day']):>13} "
            f"{_of(report['tokens_this_month'], limits['tokens_per_month']):>19} {_size(report['storage_bytes']):>9} "
            f"{report['cost_estimate_usd']:>8.2f}  {status}"
        )
    lines.append(f"{len(reports)} workspace(s), most expensive first")
    return "\n".join(lines)
