from importlib import import_module

Migration = import_module("vectordb.migrations.0002_embedding_created_at_default").Migration
