from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("vectordb", "0002_embedding_created_at_default")]

    operations = [
        migrations.AddField("embedding", "language", models.CharField(max_length=16, null=True)),
    ]
