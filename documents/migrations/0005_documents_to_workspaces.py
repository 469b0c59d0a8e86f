from django.db import migrations


def documents_to_personal_workspaces(apps, schema_editor):
    """Every document goes to its uploader's personal workspace (made by tenants 0007): the workspace whose database
    holds its chunks."""
    Document = apps.get_model("documents", "Document")
    Workspace = apps.get_model("tenants", "Workspace")
    for workspace in Workspace.objects.filter(personal=True).only("id", "owner_id").iterator():
        Document.objects.filter(uploaded_by_id=workspace.owner_id, workspace__isnull=True).update(workspace=workspace)


class Migration(migrations.Migration):
    dependencies = [("documents", "0004_document_workspace"), ("tenants", "0007_personal_workspaces")]

    operations = [migrations.RunPython(documents_to_personal_workspaces, migrations.RunPython.noop)]
