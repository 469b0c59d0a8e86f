"""The one progress-bar style of the management commands (tqdm): `[#####-----] 120/300 tenants, 2 failed`."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(stream: Any, total: int, unit: str, **options: Any) -> tqdm:
    """A bar drawn on `stream` (a command's self.stdout), redrawn in place; set its postfix for a short status."""
    return tqdm(
        total=total,
        file=getattr(stream, "_out", stream),  # Django's OutputWrapper would add a newline to every redraw
        unit=unit,
        bar_format="{desc}[{bar:30}] {n_fmt}/{total_fmt} " + unit + "{postfix}",
        ascii=" #",
        dynamic_ncols=False,
        **options,
    )
