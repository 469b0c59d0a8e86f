from django.db import migrations


class Migration(migrations.Migration):
    """The model that holds a document's chunks is named for them. Its table stays `embeddings`: nothing changes in
    the database, so the app running on the previous schema keeps working during the fleet migration."""

    dependencies = [("vectordb", "0002_embedding_created_at_default")]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.RenameModel("Embedding", "Chunk")]),
    ]
