import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Every document has its workspace now (0005): new ones must too."""

    dependencies = [("documents", "0005_documents_to_workspaces")]

    operations = [
        migrations.AlterField(
            model_name="document",
            name="workspace",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="documents", to="tenants.workspace"
            ),
        )
    ]
