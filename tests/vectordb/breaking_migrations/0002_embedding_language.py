from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("vectordb", "0001_initial")]

    operations = [
        migrations.AddField("embedding", "language", models.CharField(max_length=16, null=True)),
    ]
