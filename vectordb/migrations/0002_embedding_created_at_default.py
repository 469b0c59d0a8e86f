import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("vectordb", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="embedding",
            name="created_at",
            field=models.DateTimeField(auto_now_add=True, db_default=django.db.models.functions.datetime.Now()),
        ),
    ]
