from django.db import migrations, models


class Migration(migrations.Migration):
    """The warm pool: pooled registry rows and what a claim records."""

    dependencies = [
        ("tenants", "0003_drop_colliding_unverified_email_claims"),
    ]

    operations = [
        migrations.AddField(
            model_name="vectordatabase",
            name="claimed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="vectordatabase",
            name="rotation_pending",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="vectordatabase",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("provisioning", "Provisioning"),
                    ("ready", "Ready"),
                    ("failed", "Failed"),
                    ("deleting", "Deleting"),
                    ("deleted", "Deleted"),
                    ("pooled", "Pooled"),
                ],
                default="pending",
                max_length=20,
            ),
        ),
        migrations.AddIndex(
            model_name="vectordatabase",
            index=models.Index(
                condition=models.Q(status="pooled"),
                fields=["provider", "region", "schema_version"],
                name="vector_databases_pool",
            ),
        ),
    ]
