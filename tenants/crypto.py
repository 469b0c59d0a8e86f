"""Tenant credentials are encrypted at rest in the main database (Fernet; the first key encrypts, all decrypt)."""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt_credentials(credentials: dict[str, str]) -> str:
    return _fernet(tuple(settings.CREDENTIALS_KEYS)).encrypt(json.dumps(credentials).encode()).decode()


def decrypt_credentials(token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        return json.loads(_fernet(tuple(settings.CREDENTIALS_KEYS)).decrypt(token.encode()))
    except InvalidToken:
        raise ValueError("tenant credentials cannot be decrypted with the configured SILO_CREDENTIALS_KEYS") from None
