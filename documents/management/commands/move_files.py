from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from documents import services
from tenants.management.lookup import workspace_for_command


class Command(BaseCommand):
    help = (
        "Move a workspace's uploaded files to another region (that region's bucket when uploads are on object "
        "storage), as part of moving the workspace there. Safe to run again: it finishes what an interrupted run started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "workspace",
            metavar="SLUG_OR_EMAIL",
            help="A workspace slug, or an email for that person's personal workspace.",
        )
        parser.add_argument("region", help="The region its files go to.")

    def handle(self, *args, workspace: str, region: str, **options) -> None:
        if settings.S3_BUCKETS and region not in settings.S3_BUCKETS:
            known = ", ".join(sorted(settings.S3_BUCKETS))
            raise CommandError(f"no bucket for region {region!r} in SILO_S3_BUCKETS (known: {known})")
        moved = services.document_files_move_region(workspace_for_command(workspace), region)
        self.stdout.write(self.style.SUCCESS(f"{workspace}: {moved} file(s) moved to {region}"))
