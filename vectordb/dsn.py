"""The one DSN parser: PostgreSQL connection strings (URLs or key=value) in and out.

Settings, providers and tenant migrations all read and build DSNs through `Dsn`, so quoting, ports, IPv6 hosts and
query options are handled once. A `Dsn` holds a password: its repr never shows it; `redacted()` is for logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Settings libpq takes in the query string that are not part of the address.
_ADDRESS_KEYS = {"host", "port", "dbname", "user", "password"}


class InvalidDsn(ValueError):
    """Not a PostgreSQL connection string."""


@dataclass(frozen=True)
class Dsn:
    host: str = ""
    port: int | None = None
    database: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as error:
            raise InvalidDsn(f"not a PostgreSQL connection string: {str(error).splitlines()[0]}") from None
        port = str(params.get("port") or "")
        if port and not port.isdigit():
            raise InvalidDsn(f"port {port!r} is not a number")
        return cls(
            host=str(params.get("host") or ""),
            port=int(port) if port else None,
            database=str(params.get("dbname") or ""),
            user=str(params.get("user") or ""),
            password=str(params.get("password") or ""),
            options={key: str(value) for key, value in params.items() if key not in _ADDRESS_KEYS},
        )

    def replace(self, **changes: object) -> Dsn:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def url(self) -> str:
        """As a postgresql:// URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = quote(self.user, safe="") if self.user else ""
        if self.user and self.password:
            credentials += ":" + quote(self.password, safe="")
        netloc = (f"{credentials}@" if credentials else "") + host + (f":{self.port}" if self.port else "")
        query = f"?{urlencode(self.options)}" if self.options else ""
        return f"postgresql://{netloc}/{quote(self.database, safe='')}{query}"

    def redacted(self) -> str:
        """Fit for logs and error messages: everything but the password."""
        params = {"host": self.host, "port": str(self.port or ""), "dbname": self.database, "user": self.user}
        params |= self.options
        if self.password:
            params["password"] = "***"
        return make_conninfo(**{key: value for key, value in params.items() if value})

    def django_settings(self, **overrides: object) -> dict:
        """A Django DATABASES entry for this database (the query options become connection OPTIONS)."""
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.database,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": str(self.port or ""),
            "OPTIONS": dict(self.options),
            "CONN_MAX_AGE": 0,
            **overrides,
        }


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for logs and error messages."""
    try:
        return Dsn.parse(dsn).redacted()
    except InvalidDsn:
        return "<unparseable dsn>"
