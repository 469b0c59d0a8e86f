import django.db.models.deletion
from django.db import migrations, models


def _limit(name):
    return (name, models.PositiveIntegerField(blank=True, null=True))


def _big_limit(name):
    return (name, models.BigIntegerField(blank=True, null=True))


class Migration(migrations.Migration):
    """Plans, each workspace's plan with its overrides and readings, and usage counters per period (issue 21)."""

    dependencies = [("tenants", "0008_vector_database_tenant_removed")]

    operations = [
        migrations.CreateModel(
            name="Plan",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.SlugField(max_length=40, unique=True)),
                ("label", models.CharField(max_length=100)),
                ("is_default", models.BooleanField(default=False)),
                _big_limit("storage_bytes"),
                _limit("documents"),
                _limit("pages_per_month"),
                _limit("questions_per_day"),
                _big_limit("tokens_per_month"),
                _limit("members"),
                _limit("document_max_text_chars"),
                _limit("document_max_chunks"),
                _limit("chat_max_concurrent_streams"),
                _big_limit("neon_active_time_seconds"),
                _big_limit("neon_compute_time_seconds"),
                _big_limit("neon_written_data_bytes"),
                _big_limit("neon_data_transfer_bytes"),
                _big_limit("neon_logical_size_bytes"),
            ],
            options={
                "db_table": "plans",
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(is_default=True), fields=("is_default",), name="plans_one_default"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="WorkspacePlan",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("overrides", models.JSONField(blank=True, default=dict)),
                ("storage_bytes", models.BigIntegerField(blank=True, null=True)),
                ("storage_sampled_at", models.DateTimeField(blank=True, null=True)),
                ("neon_consumption", models.JSONField(blank=True, default=dict)),
                ("neon_suspended", models.BooleanField(default=False)),
                ("neon_quota_synced", models.JSONField(blank=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "plan",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="assignments", to="tenants.plan"
                    ),
                ),
                (
                    "workspace",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="plan_assignment",
                        to="tenants.workspace",
                    ),
                ),
            ],
            options={"db_table": "workspace_plans"},
        ),
        migrations.CreateModel(
            name="WorkspaceUsage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("period", models.CharField(choices=[("month", "Month"), ("day", "Day")], max_length=5)),
                ("starts_on", models.DateField()),
                ("pages", models.PositiveIntegerField(default=0)),
                ("questions", models.PositiveIntegerField(default=0)),
                ("tokens", models.BigIntegerField(default=0)),
                (
                    "workspace",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="usage", to="tenants.workspace"
                    ),
                ),
            ],
            options={
                "db_table": "workspace_usage",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("workspace", "period", "starts_on"), name="workspace_usage_one_per_period"
                    )
                ],
            },
        ),
    ]
