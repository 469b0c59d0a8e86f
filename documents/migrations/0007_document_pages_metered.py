from django.db import migrations, models


class Migration(migrations.Migration):
    """The pages a document counted against its workspace's monthly allowance (issue 21)."""

    dependencies = [("documents", "0006_document_workspace_required")]

    operations = [
        migrations.AddField(model_name="document", name="pages_metered", field=models.PositiveIntegerField(default=0))
    ]
