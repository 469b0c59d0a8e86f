# The real first tenant migration, so test tenants provisioned with it need only what follows.
from importlib import import_module

Migration = import_module("vectordb.migrations.0001_initial").Migration
