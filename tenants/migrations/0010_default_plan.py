from django.db import migrations

# As in tenants.plans.DEFAULT_PLAN_LIMITS at the time of writing (a migration keeps its own copy).
DEFAULT_PLAN = {
    "name": "free",
    "label": "Free",
    "is_default": True,
    "storage_bytes": 1024**3,
    "documents": 100,
    "pages_per_month": 5000,
    "questions_per_day": 1000,
    "tokens_per_month": 2_000_000,
    "members": 10,
}


def seed_default_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Workspace = apps.get_model("tenants", "Workspace")
    WorkspacePlan = apps.get_model("tenants", "WorkspacePlan")
    plan = Plan.objects.filter(is_default=True).first()
    if plan is None:
        plan = Plan.objects.create(**DEFAULT_PLAN)
    assigned = set(WorkspacePlan.objects.values_list("workspace_id", flat=True))
    WorkspacePlan.objects.bulk_create(
        [WorkspacePlan(workspace_id=workspace_id, plan=plan)
         for workspace_id in Workspace.objects.values_list("id", flat=True) if workspace_id not in assigned],
        batch_size=1000,
    )  # fmt: skip


class Migration(migrations.Migration):
    """The default plan (100 documents, 5,000 pages a month, 1,000 questions a day), given to every workspace."""

    dependencies = [("tenants", "0009_plans_and_usage")]

    operations = [migrations.RunPython(seed_default_plan, migrations.RunPython.noop)]
