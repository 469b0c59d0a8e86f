"""Every person becomes the owner of a personal workspace, and the database that was theirs becomes that workspace's.

The registry row is re-pointed, nothing is copied: the tenant database, its credentials and its content stay where
they are, so the app keeps working while this runs. Idempotent: a person who already has a personal workspace keeps it.
"""

import secrets

from django.db import migrations
from django.utils.text import slugify


def personal_workspaces_create(apps, schema_editor):
    User = apps.get_model("tenants", "User")
    Workspace = apps.get_model("tenants", "Workspace")
    Membership = apps.get_model("tenants", "Membership")
    VectorDatabase = apps.get_model("tenants", "VectorDatabase")
    for user in User.objects.order_by("id").iterator():
        workspace = Workspace.objects.filter(owner=user, personal=True).first()
        if workspace is None:
            local_part = user.email.split("@")[0]
            workspace = Workspace.objects.create(
                name=f"{user.name or local_part}'s workspace"[:150],
                slug=f"{(slugify(local_part)[:40].strip('-') or 'workspace')}-{secrets.token_hex(3)}",
                owner=user,
                personal=True,
            )
        Membership.objects.get_or_create(workspace=workspace, user=user, defaults={"role": "owner"})
        VectorDatabase.objects.filter(tenant=user, workspace__isnull=True).update(workspace=workspace)


def personal_workspaces_unlink(apps, schema_editor):
    """Backwards: the registry rows point at their workspace's owner again (the workspaces go with the schema)."""
    VectorDatabase = apps.get_model("tenants", "VectorDatabase")
    for row in VectorDatabase.objects.filter(workspace__isnull=False).select_related("workspace"):
        VectorDatabase.objects.filter(id=row.id).update(tenant=row.workspace.owner_id)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0006_workspaces")]

    operations = [migrations.RunPython(personal_workspaces_create, personal_workspaces_unlink)]
