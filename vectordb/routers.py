"""Keeps the tenant schema (the `vectordb` app's tables) in tenant databases and everything else in `default`.

Tenant databases are reached through connection aliases that start with TENANT_ALIAS_PREFIX; they are added to
Django's connection handler at run time by `vectordb.aliases`.
"""

TENANT_APP_LABEL = "vectordb"
TENANT_ALIAS_PREFIX = "tenant_"


def is_tenant_alias(alias: str) -> bool:
    return alias.startswith(TENANT_ALIAS_PREFIX)


class TenantDatabaseRouter:
    def db_for_read(self, model, **hints):
        return None

    def db_for_write(self, model, **hints):
        return None

    def allow_relation(self, obj1, obj2, **hints):
        return None

    def allow_migrate(self, db: str, app_label: str, model_name=None, **hints) -> bool:
        if is_tenant_alias(db):
            return app_label == TENANT_APP_LABEL
        return app_label != TENANT_APP_LABEL
