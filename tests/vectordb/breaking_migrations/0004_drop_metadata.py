from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("vectordb", "0003_embedding_language")]

    operations = [migrations.RemoveField("embedding", "metadata")]
