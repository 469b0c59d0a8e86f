from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.progress import progress_bar
from tenants import services
from tenants.management.lookup import workspace_for_command
from vectordb.fleet import FleetOutcome, fleet_needing_contact, fleet_plan


class Command(BaseCommand):
    help = (
        "Apply pending tenant-schema migrations to the ready tenant databases the registry records behind the latest "
        "migration, concurrently; databases already at the latest version are not contacted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=settings.TENANT_MIGRATION_JOBS, help="Tenants at once.")
        parser.add_argument("--plan", action="store_true", help="Print what is pending per tenant; change nothing.")
        parser.add_argument(
            "--tenant", metavar="SLUG_OR_EMAIL", help="Only this workspace (an email: that person's personal one)."
        )
        parser.add_argument(
            "--canary", type=int, metavar="N", help="Migrate N tenants first; stop there if any of them fails."
        )
        parser.add_argument("--max-failures", type=int, metavar="K", help="Stop starting tenants once K have failed.")
        parser.add_argument(
            "--allow-breaking",
            action="store_true",
            help="Allow destructive operations (drop, rename, type change); the running app may break meanwhile.",
        )

    def handle(
        self,
        *args,
        jobs: int,
        plan: bool,
        tenant: str | None,
        canary: int | None,
        max_failures: int | None,
        allow_breaking: bool,
        **options,
    ) -> None:
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        if canary is not None and canary < 1:
            raise CommandError("--canary must be at least 1")
        if max_failures is not None and max_failures < 1:
            raise CommandError("--max-failures must be at least 1")
        # Decided in the registry: only the tenants it does not record at the latest migration are loaded.
        workspace = workspace_for_command(tenant) if tenant else None
        total = services.fleet_size(workspace)
        if tenant and not total:
            raise CommandError(f"no ready tenant database for {tenant}")
        members = services.fleet_members(workspace, behind_only=True)
        if plan:
            return self._plan(members, jobs)
        failed = 0
        with progress_bar(self.stdout, len(fleet_needing_contact(members)), "tenants", postfix="0 failed") as bar:

            def advance(outcome: FleetOutcome) -> None:
                nonlocal failed
                failed += 1 if outcome.error else 0
                bar.set_postfix_str(f"{failed} failed", refresh=False)
                bar.update(1)

            migration = services.tenants_migrate(
                members,
                jobs=jobs,
                allow_breaking=allow_breaking,
                on_done=advance,
                canary=canary,
                max_failures=max_failures,
                fleet_total=total,
            )
        if migration.outcomes:
            self._table(migration.outcomes)
        run = migration.run
        summary = f"run {run.id}: {run.migrated} migrated, {run.failed} failed, {migration.up_to_date} already current"
        if run.not_started:
            summary += f", {run.not_started} not started"
        self.stdout.write(summary)
        for outcome in migration.failures:
            self.stderr.write(f"FAILED {outcome.member.label}: {outcome.error}")
        if run.stop_reason:
            raise CommandError(f"rollout stopped: {run.stop_reason}; fix the failures and run again to resume")
        if migration.failures:
            raise CommandError(
                f"{len(migration.failures)} of {len(migration.outcomes)} tenant databases failed; run again to resume"
            )
        self.stdout.write(self.style.SUCCESS(f"{total} tenant databases at the latest schema"))

    def _plan(self, members, jobs: int) -> None:
        outcomes = fleet_plan(members, jobs=jobs)
        unreachable = [outcome for outcome in outcomes if outcome.error]
        pending = [outcome for outcome in outcomes if outcome.ok and outcome.pending]
        if pending:  # one write: a plan may list every tenant of a large fleet
            self.stdout.write("\n".join(f"{outcome.member.label}: {', '.join(outcome.pending)}" for outcome in pending))
        for outcome in unreachable:
            self.stderr.write(f"UNREACHABLE {outcome.member.label}: {outcome.error}")
        if not pending and not unreachable:
            self.stdout.write("nothing pending")
        if unreachable:
            raise CommandError(f"{len(unreachable)} tenant databases could not be inspected")

    def _table(self, outcomes: list[FleetOutcome]) -> None:
        width = max([len(outcome.member.label) for outcome in outcomes] + [6])
        self.stdout.write(f"{'tenant':<{width}}  {'result':<11} {'applied':<40} {'seconds':>7}")
        for outcome in outcomes:
            result = "not started" if outcome.not_started else "FAILED" if outcome.error else "ok"
            applied = ", ".join(outcome.applied) or ("-" if not outcome.error else outcome.error[:40])
            self.stdout.write(f"{outcome.member.label:<{width}}  {result:<11} {applied:<40} {outcome.seconds:>7.2f}")
