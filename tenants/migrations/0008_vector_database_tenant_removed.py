from django.db import migrations


class Migration(migrations.Migration):
    """The registry row belongs to a workspace now (0007 moved every row); the person's column goes."""

    dependencies = [("tenants", "0007_personal_workspaces"), ("documents", "0005_documents_to_workspaces")]

    operations = [migrations.RemoveField(model_name="vectordatabase", name="tenant")]
