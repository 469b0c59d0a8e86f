from django.db import migrations, models


class Migration(migrations.Migration):
    """Conversations record the member who started them and whether they are shared with the workspace. Additions with
    database defaults: the app running on the previous schema keeps inserting conversations during the fleet
    migration. Existing conversations (no `started_by`) are the workspace owner's."""

    dependencies = [("vectordb", "0003_rename_embedding_to_chunk")]

    operations = [
        migrations.AddField(
            model_name="conversation", name="started_by", field=models.BigIntegerField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="conversation",
            name="shared",
            field=models.BooleanField(db_default=False, default=False),
        ),
    ]
