from django.apps import AppConfig


class VectordbConfig(AppConfig):
    name = "vectordb"
    verbose_name = "Tenant vector databases"
    default_auto_field = "django.db.models.BigAutoField"
