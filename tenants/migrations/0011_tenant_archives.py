import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """Tenant archives (backups and the snapshots restores and moves are made from) and the registry's record of a
    restore or move in progress."""

    dependencies = [("tenants", "0010_default_plan")]

    operations = [
        migrations.AddField(
            model_name="vectordatabase", name="operation", field=models.CharField(blank=True, max_length=20)
        ),
        migrations.AddField(
            model_name="vectordatabase", name="operation_step", field=models.CharField(blank=True, max_length=200)
        ),
        migrations.AddField(
            model_name="vectordatabase", name="operation_started_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="vectordatabase",
            name="replaces",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="tenants.vectordatabase",
            ),
        ),
        migrations.CreateModel(
            name="TenantArchive",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[("scheduled", "Scheduled"), ("manual", "Manual"), ("move", "Move")],
                        default="manual",
                        max_length=20,
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[("running", "Running"), ("ready", "Ready"), ("failed", "Failed")],
                        default="running",
                        max_length=20,
                    ),
                ),
                ("file_name", models.CharField(blank=True, max_length=255)),
                ("size_bytes", models.BigIntegerField(default=0)),
                ("sha256", models.CharField(blank=True, max_length=64)),
                ("schema_version", models.CharField(blank=True, max_length=100)),
                ("embedding_model", models.CharField(blank=True, max_length=100)),
                ("documents", models.PositiveIntegerField(default=0)),
                ("chunks", models.PositiveIntegerField(default=0)),
                ("error", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "workspace",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="archives", to="tenants.workspace"
                    ),
                ),
            ],
            options={
                "db_table": "tenant_archives",
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["workspace", "-created_at"], name="tenant_archives_workspace")],
            },
        ),
    ]
