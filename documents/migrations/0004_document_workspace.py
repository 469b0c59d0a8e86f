import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """Documents belong to a workspace; the person who uploaded them is kept in the same column as before (`owner_id`,
    now nullable: the document stays with the workspace when they leave)."""

    dependencies = [
        ("documents", "0003_formats_and_ocr_progress"),
        ("tenants", "0006_workspaces"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="workspace",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="documents",
                to="tenants.workspace",
            ),
        ),
        migrations.RemoveIndex(model_name="document", name="documents_owner_created"),
        # The field is renamed for Django only: its column stays `owner_id`, so the running app is not broken.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField("document", "owner", "uploaded_by"),
                migrations.AlterField(
                    model_name="document",
                    name="uploaded_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_column="owner_id",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="uploaded_documents",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE documents ALTER COLUMN owner_id DROP NOT NULL",
                    "ALTER TABLE documents ALTER COLUMN owner_id SET NOT NULL",
                )
            ],
        ),
        migrations.AddIndex(
            model_name="document",
            index=models.Index(fields=["workspace", "-created_at"], name="documents_workspace_created"),
        ),
    ]
