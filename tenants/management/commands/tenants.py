import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils.text import slugify

from tenants import archive_reconcile, selectors, services
from tenants.crypto import decrypt_credentials
from tenants.management import archive_commands
from tenants.management.lookup import user_for_command, workspace_for_command
from tenants.management.usage_format import USAGE_COLUMNS_HEADER, usage_columns, usage_table
from tenants.models import Membership, User, VectorDatabase, Workspace
from tenants.plans import InvalidOverride, workspace_plan_change
from tenants.usage import usage_report
from tenants.workspaces import WorkspaceRefused, workspace_create

WORKSPACE_HELP = "A workspace slug, or an email for that person's personal workspace."


class Command(BaseCommand):
    help = (
        "Operate the fleet of workspaces (the tenants) and their databases: add, show, dsn, remove, list, reconcile, "
        "limits, pool, verify, servers, usage, plan, backup, backups, restore, move, import. Every subcommand that names "
        "a tenant takes a workspace slug or an email (that "
        "person's personal workspace)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True)
        add = subcommands.add_parser(
            "add",
            help="EMAIL: create the account if missing and provision its personal workspace's database now. "
            "SLUG --owner EMAIL: create a team workspace owned by EMAIL.",
        )
        add.add_argument("identifier", metavar="EMAIL_OR_SLUG")
        add.add_argument("--owner", metavar="EMAIL", default=None, help="Owner of a new team workspace.")
        add.add_argument("--name", default=None, help="Name of a new team workspace (default: its slug).")
        add.add_argument("--region", default=None)
        show = subcommands.add_parser("show", help="Where a workspace's database is and its state.")
        show.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
        show.add_argument("--json", action="store_true")
        dsn = subcommands.add_parser("dsn", help="Print the workspace database's connection URI (operator use only).")
        dsn.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
        remove = subcommands.add_parser(
            "remove",
            help="SLUG: drop the workspace's database and delete it. EMAIL: delete the account, with the workspaces "
            "it solely owns.",
        )
        remove.add_argument("identifier", metavar="SLUG_OR_EMAIL")
        listing = subcommands.add_parser("list", help="Every workspace database in the registry.")
        listing.add_argument("--json", action="store_true")
        reconcile = subcommands.add_parser("reconcile", help="Compare the registry with the provider.")
        reconcile.add_argument("--apply", action="store_true", help="Delete orphans, re-provision what is missing.")
        limits = subcommands.add_parser(
            "limits", help="Check every tenant role against what one tenant may take of a shared server."
        )
        limits.add_argument("--apply", action="store_true", help="Bring the tenants found under the bounds.")
        pool = subcommands.add_parser("pool", help="The warm pool of ready databases, per provider and region.")
        pool.add_argument("action", choices=["status", "fill", "drain"], help="status: show it; fill: top it up "
                          "now, in this process (no worker needed); drain: erase every pooled database")  # fmt: skip
        pool.add_argument("--region", default=None, help="Only this region (default: every region).")
        pool.add_argument("--json", action="store_true", help="status and fill: print JSON.")
        verify = subcommands.add_parser(
            "verify",
            help="Connect to every ready tenant database, check its schema, pgvector, indexes and embedding model, "
            "and correct the registry to what the databases have.",
        )
        verify.add_argument("--jobs", type=int, default=settings.TENANT_MIGRATION_JOBS, help="Tenants at once.")
        verify.add_argument(
            "--rate", type=float, default=None, metavar="R", help="At most R new tenant connections a second."
        )
        servers = subcommands.add_parser(
            "servers", help="Each administered server's tenants, size and free capacity; drain or undrain one."
        )
        servers.add_argument("action", nargs="?", choices=["drain", "undrain"], help="Mark a server (no new tenants).")
        servers.add_argument("name", nargs="?", help="The server's name in TENANT_POSTGRES_SERVERS.")
        archive_commands.add_archive_subcommands(subcommands)  # backup, backups, restore, move, import
        usage = subcommands.add_parser("usage", help="Usage against the plan's limits, most expensive first.")
        usage.add_argument("identifier", nargs="?", metavar="SLUG_OR_EMAIL", help="Only this workspace.")
        usage.add_argument("--json", action="store_true")
        plan = subcommands.add_parser("plan", help="Move a workspace to a plan and/or override one of its limits.")
        plan.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
        plan.add_argument("plan", nargs="?", metavar="PLAN", help="The plan's name (see the admin's Plans).")
        plan.add_argument("--set", action="append", default=[], metavar="LIMIT=VALUE", dest="overrides",
                          help="Override one limit for this workspace (none: unlimited, default: the plan's).")  # fmt: skip

    def handle(self, *args, subcommand: str, **options) -> None:
        if subcommand in archive_commands.SUBCOMMANDS:
            archive_commands.SUBCOMMANDS[subcommand](self, **options)
            return
        getattr(self, f"_{subcommand}")(**options)

    def _vector_database(self, identifier: str) -> VectorDatabase:
        workspace = workspace_for_command(identifier)
        vector_database = selectors.vector_database_for_tenant(workspace)
        if vector_database is None:
            raise CommandError(f"{workspace.slug} has no vector database; run `tenants add {identifier.strip()}`")
        return vector_database

    def _account(self, email: str) -> User:
        user = selectors.user_by_email(email)
        if user is None:
            user = User.objects.create_user(email=email.strip())  # no password: signs in with a reset or Google
            self.stdout.write(f"created user {user.email}")
        return user

    def _add(self, identifier: str, owner: str | None, name: str | None, region: str | None, **_) -> None:
        identifier = identifier.strip()
        if owner is not None:
            workspace = self._team_workspace(identifier, owner, name, region)
        elif "@" in identifier:
            workspace = Workspace.objects.personal_for(self._account(identifier))
        else:
            workspace = workspace_for_command(identifier)
        vector_database = services.vector_database_request(workspace, region=region)
        if vector_database.status == VectorDatabase.Status.FAILED:
            services.vector_database_retry(workspace)
        try:
            vector_database = services.vector_database_provision(vector_database.id)
        except services.ProvisioningFailed as error:
            raise CommandError(f"provisioning failed: {error}") from None
        if vector_database.status != VectorDatabase.Status.READY:
            raise CommandError(f"provisioning failed: {vector_database.last_error}")
        label = workspace.label
        self.stdout.write(
            self.style.SUCCESS(f"{label}: ready ({vector_database.provider}, {vector_database.external_id})")
        )

    def _team_workspace(self, slug: str, owner_email: str, name: str | None, region: str | None) -> Workspace:
        slug = slug.lower()
        if "@" in slug or slug != slugify(slug) or not slug:
            raise CommandError(f"{slug!r} is not a workspace slug: use lowercase letters, digits and hyphens")
        existing = Workspace.objects.filter(slug=slug).first()
        if existing is not None:
            if existing.owner.email != owner_email.strip().lower():
                raise CommandError(f"workspace {slug} exists, owned by {existing.owner.email}")
            return existing  # idempotent: add again finishes provisioning
        try:
            workspace = workspace_create(self._account(owner_email), name or slug, region=region, slug=slug)
        except WorkspaceRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"created workspace {workspace.slug} owned by {workspace.owner.email}")
        return workspace

    def _show(self, identifier: str, json: bool, **_) -> None:
        summary = selectors.vector_database_summary(self._vector_database(identifier), with_size=True)
        if json:
            self.stdout.write(_json(summary))
        else:
            for key, value in summary.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}={v}" for k, v in value.items())
                self.stdout.write(f"{key:>22}: {value if value is not None else ''}")

    def _dsn(self, identifier: str, **_) -> None:
        vector_database = self._vector_database(identifier)
        if vector_database.status != VectorDatabase.Status.READY:
            raise CommandError(f"{identifier.strip()}'s database is {vector_database.status}")
        self.stdout.write(decrypt_credentials(vector_database.encrypted_credentials)["dsn"])

    def _remove(self, identifier: str, **_) -> None:
        if "@" in identifier:
            services.tenant_erase(user_for_command(identifier).id)
            self.stdout.write(self.style.SUCCESS(f"{identifier.strip()}: account deleted with the workspaces it owned"))
            return
        workspace = workspace_for_command(identifier)
        if workspace.personal:
            raise CommandError(
                f"{workspace.slug} is {workspace.owner.email}'s personal workspace: remove the account instead"
            )
        services.workspace_erase(workspace.id)
        self.stdout.write(self.style.SUCCESS(f"{workspace.slug}: database dropped and workspace deleted"))

    def _usage(self, identifier: str | None, json: bool, **_) -> None:
        workspaces = [workspace_for_command(identifier)] if identifier else None
        reports = [report.as_dict() for report in usage_report(workspaces)]
        self.stdout.write(_json(reports) if json else usage_table(reports))

    def _plan(self, identifier: str, plan: str | None, overrides: list[str], **_) -> None:
        workspace = workspace_for_command(identifier)
        if plan is None and not overrides:
            raise CommandError("Name a plan, or --set LIMIT=VALUE, or both.")
        try:
            assignment = workspace_plan_change(workspace, plan, overrides)
        except InvalidOverride as error:
            raise CommandError(str(error)) from None
        extra = f" with {_json(assignment.overrides)}" if assignment.overrides else ""
        self.stdout.write(self.style.SUCCESS(f"{workspace.label}: plan {assignment.plan.name}{extra}"))

    def _list(self, json: bool, **_) -> None:
        live = VectorDatabase.objects.select_related("workspace__owner").exclude(status=VectorDatabase.Status.DELETED)
        members = dict(
            Membership.objects.values_list("workspace_id")
            .annotate(count=Count("id"))
            .values_list("workspace_id", "count")
        )
        by_slug = {report.slug: report.as_dict() for report in usage_report()}
        used = {w.id: by_slug[w.slug] for w in Workspace.objects.filter(slug__in=by_slug)}
        rows = []
        for row in live.order_by("id"):
            summary = selectors.vector_database_summary(row)
            summary["members"] = members.get(row.workspace_id, 0) if row.workspace_id else 0
            summary["usage"] = used.get(row.workspace_id) if row.workspace_id else None
            rows.append(summary)
        if json:
            self.stdout.write(_json(rows))
            return
        named_rows = [(summary, summary["workspace"] or {"slug": "-", "owner": "-"}) for summary in rows]
        # Columns as wide as their longest value, so a long email or schema name never shifts the columns after it.
        slug_width = max([len("workspace"), *(len(named["slug"]) for _, named in named_rows)])
        owner_width = max([len("owner"), *(len(named["owner"]) for _, named in named_rows)])
        region_width = max([len("region"), *(len(summary["region"]) for summary, _ in named_rows)])
        schema_width = max([len("schema"), *(len(summary["schema_version"]) for summary, _ in named_rows)])
        self.stdout.write(
            f"{'workspace':<{slug_width}} {'owner':<{owner_width}} {'members':>7} {'status':<13} "
            f"{'region':<{region_width}} {'schema':<{schema_width}} {'provider':<8}  {USAGE_COLUMNS_HEADER}"
        )
        for summary, named in named_rows:
            self.stdout.write(
                f"{named['slug']:<{slug_width}} {named['owner']:<{owner_width}} {summary['members']:>7} "
                f"{summary['status']:<13} {summary['region']:<{region_width}} "
                f"{summary['schema_version']:<{schema_width}} {summary['provider']:<8}  "
                f"{usage_columns(summary['usage'])}"
            )
        self.stdout.write(f"{len(rows)} workspace database(s)")

    def _reconcile(self, apply: bool, **_) -> None:
        report = services.tenants_reconcile(apply=apply)
        for server, external_id in report.orphans:
            self.stdout.write(f"orphan: {external_id} on {server} has no tenant")
        for tenant_key in report.missing:
            self.stdout.write(f"missing: tenant {tenant_key} is marked ready but its database is gone")
        for tenant_key in report.stuck:
            self.stdout.write(f"stuck: tenant {tenant_key} has been provisioning for too long")
        for tenant_key in report.pooled_missing:
            self.stdout.write(f"missing: pooled database {tenant_key} is gone from its server")
        for tenant_key in report.pooled_stuck:
            self.stdout.write(f"stuck: pooled database {tenant_key} never became ready")
        half_done = archive_reconcile.operations_half_done()
        old_left, dropped = archive_reconcile.old_databases_left(apply)
        for item in half_done + old_left:
            self.stdout.write(f"half done: {item.message}")
        for line in report.fixed + dropped:
            self.stdout.write(f"fixed: {line}")
        if report.clean and not half_done and not old_left:
            self.stdout.write(self.style.SUCCESS("registry and provider agree"))
        elif half_done and report.clean and (apply or not old_left):
            raise CommandError("a restore or move is half done: run the command shown to finish it")
        elif not apply:
            raise CommandError("registry and provider disagree; run with --apply to fix")

    def _pool(self, action: str, region: str | None, json: bool, **_) -> None:
        if action == "drain":
            drained = services.tenant_pool_drain(region)
            self.stdout.write(self.style.SUCCESS(f"{drained} pooled database(s) erased"))
            return
        if action == "fill":
            refills = services.tenant_pool_refill(region)
            if json:
                self.stdout.write(_json([refill.as_dict() for refill in refills]))
                return
            for refill in refills:
                self.stdout.write(
                    f"{refill.provider}/{refill.region}: busy, another process is refilling it"
                    if refill.skipped
                    else f"{refill.provider}/{refill.region}: {refill.created} created, {refill.migrated} migrated, "
                    f"{refill.removed} removed in {refill.seconds:.1f}s"
                )
                if refill.stopped:
                    self.stdout.write(f"  stopped: {refill.stopped}")
        states = [state for state in services.tenant_pool_status() if not region or state.region == region]
        if json:
            self.stdout.write(_json([state.as_dict() for state in states]))
            return
        self.stdout.write(f"{'provider':<9} {'region':<16} {'target':>6} {'pooled':>6} {'filling':>7} {'stale':>5}")
        for state in states:
            self.stdout.write(
                f"{state.provider:<9} {state.region:<16} {state.target:>6} {state.pooled:>6} {state.filling:>7} "
                f"{state.stale:>5}"
            )
            if state.quota_note:
                self.stdout.write(f"  {state.quota_note}")

    def _limits(self, apply: bool, **_) -> None:
        report = services.tenants_bound(apply=apply)
        for label, missing in report.outside.items():
            self.stdout.write(f"{label}: {'; '.join(missing)}")
        for label in report.fixed:
            self.stdout.write(f"fixed: {label}")
        if not report.outside:
            self.stdout.write(self.style.SUCCESS("every tenant database is under the bounds"))
        elif not apply:
            count = len(report.outside)
            raise CommandError(
                f"{count} tenant database{' is' if count == 1 else 's are'} not under the bounds; "
                "run with --apply to fix"
            )

    def _verify(self, jobs: int, rate: float | None, **_) -> None:
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        if rate is not None and rate <= 0:
            raise CommandError("--rate must be above 0 (tenants a second)")
        report = services.tenants_verify(jobs=jobs, per_second=rate)
        for line in report.repaired:
            self.stdout.write(f"registry corrected: {line}")
        for label, problems in sorted(report.problems.items()):
            self.stdout.write(f"{label}: {'; '.join(problems)}")
        for label, error in sorted(report.unreachable.items()):
            self.stderr.write(f"UNREACHABLE {label}: {error}")
        self.stdout.write(f"{report.checked} tenant database(s) checked, {len(report.repaired)} registry correction(s)")
        if not report.clean:
            raise CommandError(
                f"{len(report.problems)} tenant database(s) with problems, {len(report.unreachable)} unreachable"
            )
        self.stdout.write(self.style.SUCCESS("every tenant database matches the registry"))

    def _servers(self, action: str | None, name: str | None, **_) -> None:
        if action:
            if not name:
                raise CommandError(f"name the server to {action}: `tenants servers {action} NAME`")
            try:
                services.tenant_server_drain(name, draining=action == "drain")
            except services.UnknownServer as error:
                raise CommandError(str(error)) from None
            verb = "draining: it takes no new tenants" if action == "drain" else "taking new tenants again"
            self.stdout.write(self.style.SUCCESS(f"{name} is {verb}"))
            return
        rows = selectors.tenant_servers()
        if not rows:
            raise CommandError("no administered PostgreSQL servers are configured (TENANT_POSTGRES_SERVERS)")
        self.stdout.write(f"{'server':<16} {'region':<16} {'state':<12} {'tenants':>8} {'size MB':>9} {'free':>8}")
        for row in rows:
            free = "-" if row.free is None else str(row.free)
            size = "-" if row.size_bytes is None else f"{row.size_bytes / 1e6:.1f}"
            self.stdout.write(f"{row.name:<16} {row.region:<16} {row.state:<12} {row.tenants:>8} {size:>9} {free:>8}")
        for row in rows:
            if row.error:
                self.stderr.write(f"UNREACHABLE {row.name}: {row.error}; its {row.tenants} tenant(s) are unavailable")


def _json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
