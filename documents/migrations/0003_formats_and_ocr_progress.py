from django.db import migrations, models


class Migration(migrations.Migration):
    """Documents other than PDFs (the format told at upload) and OCR progress in pages. Additive only: the running
    app works before and after it."""

    dependencies = [
        ("documents", "0002_embedding_progress"),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="file_format",
            field=models.CharField(
                choices=[
                    ("pdf", "PDF"),
                    ("docx", "Word"),
                    ("pptx", "PowerPoint"),
                    ("xlsx", "Excel"),
                    ("csv", "CSV"),
                    ("html", "HTML"),
                    ("markdown", "Markdown"),
                    ("text", "Text"),
                ],
                default="pdf",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="document",
            name="ocr_pages_done",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="document",
            name="ocr_pages_total",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
