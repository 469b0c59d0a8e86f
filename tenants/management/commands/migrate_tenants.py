from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.progress import progress_bar
from tenants import services
from vectordb.fleet import FleetOutcome, fleet_plan


class Command(BaseCommand):
    help = "Apply pending tenant-schema migrations to every ready tenant database, concurrently."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=settings.TENANT_MIGRATION_JOBS, help="Tenants at once.")
        parser.add_argument("--plan", action="store_true", help="Print what is pending per tenant; change nothing.")
        parser.add_argument("--tenant", metavar="EMAIL", help="Only this tenant.")
        parser.add_argument(
            "--allow-breaking",
            action="store_true",
            help="Allow destructive operations (drop, rename, type change); the running app may break meanwhile.",
        )

    def handle(self, *args, jobs: int, plan: bool, tenant: str | None, allow_breaking: bool, **options) -> None:
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        members = services.fleet_members(tenant)
        if tenant and not members:
            raise CommandError(f"no ready tenant database for {tenant}")
        if plan:
            return self._plan(members, jobs)
        failed = 0
        with progress_bar(self.stdout, len(members), "tenants", postfix="0 failed") as progress:

            def advance(outcome: FleetOutcome) -> None:
                nonlocal failed
                failed += 0 if outcome.ok else 1
                progress.set_postfix_str(f"{failed} failed", refresh=False)
                progress.update(1)

            outcomes = services.tenants_migrate(members, jobs=jobs, allow_breaking=allow_breaking, on_done=advance)
        self._table(outcomes)
        failures = [outcome for outcome in outcomes if not outcome.ok]
        if failures:
            for outcome in failures:
                self.stderr.write(f"FAILED {outcome.member.label}: {outcome.error}")
            raise CommandError(f"{len(failures)} of {len(outcomes)} tenant databases failed; run again to resume")
        self.stdout.write(self.style.SUCCESS(f"{len(outcomes)} tenant databases at the latest schema"))

    def _plan(self, members, jobs: int) -> None:
        outcomes = fleet_plan(members, jobs=jobs)
        unreachable = [outcome for outcome in outcomes if not outcome.ok]
        pending = [outcome for outcome in outcomes if outcome.ok and outcome.pending]
        for outcome in pending:
            self.stdout.write(f"{outcome.member.label}: {', '.join(outcome.pending)}")
        for outcome in unreachable:
            self.stderr.write(f"UNREACHABLE {outcome.member.label}: {outcome.error}")
        if not pending and not unreachable:
            self.stdout.write("nothing pending")
        if unreachable:
            raise CommandError(f"{len(unreachable)} tenant databases could not be inspected")

    def _table(self, outcomes: list[FleetOutcome]) -> None:
        width = max([len(outcome.member.label) for outcome in outcomes] + [6])
        self.stdout.write(f"{'tenant':<{width}}  {'result':<8} {'applied':<40} {'seconds':>7}")
        for outcome in outcomes:
            result = "ok" if outcome.ok else "FAILED"
            applied = ", ".join(outcome.applied) or ("-" if outcome.ok else outcome.error[:40])
            self.stdout.write(f"{outcome.member.label:<{width}}  {result:<8} {applied:<40} {outcome.seconds:>7.2f}")
