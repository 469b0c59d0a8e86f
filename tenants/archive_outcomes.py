"""The outcome of the latest Rewind or Back up now an owner started from the workspace page, kept where the page finds
it (the shared cache, for OUTCOME_DAYS): the worker that ran it records it, so a refusal or failure reaches the owner
with its reason instead of only the logs. The archive catalogue keeps what a backup left; this keeps what was asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.core.cache import cache
from django.utils import timezone

OUTCOME_DAYS = 7


@dataclass
class Outcome:
    action: str  # "rewind" or "backup"
    ok: bool
    message: str  # what happened; for a refusal or failure, why and what to do
    at: datetime

    @property
    def title(self) -> str:
        done = {"rewind": "Rewind", "backup": "Backup"}.get(self.action, self.action)
        return f"{done} {'done' if self.ok else 'failed'}"


def _key(workspace_id: int) -> str:
    return f"tenants:archive-outcome:{workspace_id}"


def outcome_record(workspace_id: int, action: str, ok: bool, message: str) -> None:
    outcome = Outcome(action=action, ok=ok, message=message, at=timezone.now())
    cache.set(_key(workspace_id), asdict(outcome), timeout=OUTCOME_DAYS * 86400)


def outcome_latest(workspace_id: int) -> Outcome | None:
    stored = cache.get(_key(workspace_id))
    return Outcome(**stored) if isinstance(stored, dict) else None


def outcome_clear(workspace_id: int) -> None:
    cache.delete(_key(workspace_id))
