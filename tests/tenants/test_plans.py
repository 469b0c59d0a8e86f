"""Plans and usage (issue 21): every limit refuses at its boundary with a message that names the limit, what is used
and when it resets; concurrent uploads cannot overshoot; a crashed worker's rerun counts nothing twice; operators see
usage and change plans from the command line."""

from __future__ import annotations

import json
import threading

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import RequestFactory

from documents import services as document_services
from documents.models import Document
from documents.services import DocumentRejected
from tenants import plans, usage
from tenants.models import Plan, VectorDatabase, Workspace, WorkspacePlan, WorkspaceUsage
from tenants.workspaces import InvitationInvalid, WorkspaceRefused, invitation_accept, invitation_create
from tests.helpers import personal_workspace
from tests.pdf_factory import text_pdf
from tests.workspaces import erase_databases, person

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def uploads(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.UPLOAD_RATE_LIMIT_PER_HOUR = 1000
    settings.OPENAI_API_KEY = ""
    yield
    erase_databases()


def _pdf(pages: int, marker: str = "") -> bytes:
    return text_pdf([f"Page {number} of the {marker} harbour log: the tide was high." for number in range(pages)])


def _upload(user, name: str, content: bytes, workspace: Workspace | None = None) -> Document:
    return document_services.document_upload(user, ContentFile(content, name=name), enqueue=False, workspace=workspace)


def _override(workspace: Workspace, **limits: int | None) -> None:
    plans.workspace_plan_change(
        workspace, overrides=[f"{key}={'none' if v is None else v}" for key, v in limits.items()]
    )


def _pages_used(workspace: Workspace) -> int:
    return (
        WorkspaceUsage.objects.filter(workspace=workspace, period="month").values_list("pages", flat=True).first() or 0
    )


def _reset_words() -> str:
    return plans.resets_on("month")


# --- the default plan ------------------------------------------------------------------------------------------------


def test_the_migration_seeds_a_default_plan_and_every_workspace_gets_it(owner, stranger):
    import importlib

    from django.apps import apps

    seed = importlib.import_module("tenants.migrations.0010_default_plan").seed_default_plan
    WorkspacePlan.objects.all().delete()  # as before the migration (a test database may have been flushed since)
    Plan.objects.all().delete()
    workspaces = [personal_workspace(owner), personal_workspace(stranger)]
    seed(apps, None)
    seed(apps, None)  # run again: nothing doubles
    default = Plan.objects.get(is_default=True)
    assert (default.name, default.documents, default.pages_per_month, default.questions_per_day) == (
        "free", 100, 5000, 1000,
    )  # fmt: skip
    assert sorted(WorkspacePlan.objects.values_list("workspace_id", "plan__name")) == sorted(
        (workspace.id, "free") for workspace in workspaces
    )
    workspace = personal_workspace(owner)
    assert plans.workspace_plan(workspace).plan == default
    limits = plans.workspace_limits(workspace)
    # The caps that were settings stay the settings' values unless a plan sets them.
    from django.conf import settings

    assert limits["document_max_text_chars"] == settings.DOCUMENT_MAX_TEXT_CHARS
    assert limits["chat_max_concurrent_streams"] == settings.CHAT_MAX_CONCURRENT_STREAMS
    assert WorkspacePlan.objects.filter(workspace=workspace).count() == 1


# --- pages -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("used", "pages", "allowed"), [(20, 4, True), (20, 5, True), (20, 6, False)],
                         ids=["just-under", "at", "just-over"])  # fmt: skip
def test_the_page_limit_refuses_a_document_whole_at_upload(owner, used, pages, allowed):
    workspace = personal_workspace(owner)
    _override(workspace, pages_per_month=25)
    _upload(owner, "earlier.pdf", _pdf(used, "earlier"))
    assert _pages_used(workspace) == used

    if allowed:
        document = _upload(owner, "report.pdf", _pdf(pages, "new"))
        assert document.pages_metered == pages
        assert _pages_used(workspace) == used + pages
        return
    with pytest.raises(DocumentRejected) as refused:
        _upload(owner, "report.pdf", _pdf(pages, "new"))
    assert str(refused.value) == (
        f"report.pdf: this document has {pages} pages; this workspace's limit is 25 pages a month and {used} are "
        f"used. {_reset_words()}"
    )
    # Nothing stored, nothing counted.
    assert list(Document.objects.filter(workspace=workspace).values_list("original_filename", flat=True)) == [
        "earlier.pdf"
    ]
    assert _pages_used(workspace) == used


def test_the_refusal_names_the_first_of_next_month():
    import datetime

    assert plans.resets_on("month", datetime.date(2026, 11, 29)) == "The limit resets on 1 December."
    assert plans.resets_on("month", datetime.date(2026, 12, 31)) == "The limit resets on 1 January."


def test_slides_and_text_count_as_pages(owner):
    from tests.document_factory import pptx_bytes

    workspace = personal_workspace(owner)
    deck = _upload(owner, "deck.pptx", pptx_bytes([{"title": f"Slide {n}", "bullets": ["tides"]} for n in range(3)]))
    notes = _upload(owner, "notes.txt", ("x" * 2999 + "\n").encode() * 2)  # 6,000 characters: two pages
    short = _upload(owner, "short.md", b"# One line\n")
    assert (deck.pages_metered, notes.pages_metered, short.pages_metered) == (3, 2, 1)
    assert _pages_used(workspace) == 6


def test_two_uploads_racing_for_the_last_ten_pages_cannot_both_get_them(owner):
    workspace = personal_workspace(owner)
    _override(workspace, pages_per_month=30)
    _upload(owner, "first.pdf", _pdf(20, "first"))
    contents = {"a.pdf": _pdf(10, "alpha"), "b.pdf": _pdf(10, "beta")}
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def upload(name: str) -> None:
        try:
            barrier.wait()
            _upload(owner, name, contents[name])
            outcomes[name] = "stored"
        except DocumentRejected as error:
            outcomes[name] = str(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=upload, args=(name,)) for name in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes.values()).count("stored") == 1, outcomes
    (refused,) = [message for message in outcomes.values() if message != "stored"]
    assert "this workspace's limit is 30 pages a month and 30 are used" in refused
    assert _pages_used(workspace) == 30
    assert Document.objects.filter(workspace=workspace).count() == 2


def test_racing_reservations_in_many_threads_never_pass_the_limit(owner):
    """The counter itself, without the upload's workspace lock: 8 threads ask for 3 pages each against 10."""
    workspace = personal_workspace(owner)
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def reserve() -> None:
        try:
            barrier.wait()
            usage.pages_reserve(workspace.id, 3, 10)
            granted.append(3)
        except plans.LimitReached:
            pass
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(granted) == 9
    assert _pages_used(workspace) == 9


def test_a_rerun_after_a_crashed_ingest_counts_the_pages_once(owner, tenants_ready):
    """A worker that dies mid-ingest is re-delivered: pages were counted at upload, so the rerun adds none."""
    workspace = personal_workspace(owner)
    document = _upload(owner, "log.pdf", _pdf(3, "crash"))
    assert _pages_used(workspace) == 3
    # The first run died after parsing (its status says so); the re-delivered task runs the pipeline again.
    Document.objects.filter(id=document.id).update(status=Document.Status.PARSING, attempts=1)
    document_services.document_ingest(document.id)
    document_services.document_ingest(document.id)  # delivered twice: a no-op the second time
    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error_message
    assert _pages_used(workspace) == 3
    document_services.document_reingest(owner, document.id)
    assert _pages_used(workspace) == 3  # a re-ingest is no new upload


def test_an_office_file_is_measured_again_at_ingest_and_refused_before_embedding_when_over(owner, tenants_ready):
    workspace = personal_workspace(owner)
    text = ("The harbour master logs every ship. " * 90).encode()  # 3,240 characters: two pages
    document = _upload(owner, "log.txt", text)
    assert document.pages_metered == 2
    Document.objects.filter(id=document.id).update(pages_metered=1)  # as if the upload's estimate had said one
    WorkspaceUsage.objects.filter(workspace=workspace).update(pages=1)
    _override(workspace, pages_per_month=1)
    document_services.document_ingest(document.id)
    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.chunk_count == 0
    assert document.error_message.startswith(
        "This document has 2 pages; this workspace's limit is 1 pages a month and 1 are used."
    )
    assert _pages_used(workspace) == 1


# --- documents, storage, members, per-document caps -------------------------------------------------------------------


@pytest.mark.parametrize(("existing", "allowed"), [(1, True), (2, False)], ids=["just-under", "at"])
def test_the_documents_limit(owner, existing, allowed):
    workspace = personal_workspace(owner)
    _override(workspace, documents=2)
    for number in range(existing):
        _upload(owner, f"doc{number}.pdf", _pdf(1, f"doc{number}"))
    if allowed:
        _upload(owner, "next.pdf", _pdf(1, "next"))
        assert Document.objects.filter(workspace=workspace).count() == existing + 1
        return
    with pytest.raises(DocumentRejected) as refused:
        _upload(owner, "next.pdf", _pdf(1, "next"))
    assert str(refused.value) == (
        "next.pdf: this workspace has 2 documents, the most its plan allows; delete one or ask an operator for a "
        "larger plan to upload more."
    )
    assert Document.objects.filter(workspace=workspace).count() == existing
    assert _pages_used(workspace) == existing


@pytest.mark.parametrize(("stored", "allowed"), [(1023, True), (1024, False)], ids=["just-under", "at"])
def test_the_storage_limit_refuses_uploads_once_the_sampled_size_reaches_it(owner, stored, allowed):
    workspace = personal_workspace(owner)
    _override(workspace, storage_bytes=1024)
    WorkspacePlan.objects.filter(workspace=workspace).update(storage_bytes=stored)
    if allowed:
        _upload(owner, "a.pdf", _pdf(1))
        return
    with pytest.raises(DocumentRejected, match=r"this workspace's database uses 1\.0 kB of the 1\.0 kB its plan"):
        _upload(owner, "a.pdf", _pdf(1))
    assert not Document.objects.filter(workspace=workspace).exists()


def test_the_members_limit_counts_pending_invitations_and_refuses_at_it(owner):
    workspace = personal_workspace(owner)
    _override(workspace, members=2)
    request = RequestFactory().get("/", HTTP_HOST="testserver")
    sent = invitation_create(owner, workspace, "bob@example.com", "viewer", request)  # 1 member + 1 invited: at 2
    with pytest.raises(WorkspaceRefused) as refused:
        invitation_create(owner, workspace, "carol@example.com", "viewer", request)
    assert str(refused.value) == (
        "This workspace's limit is 2 members and 2 are members or invited; remove a member or revoke an invitation, "
        "or ask an operator for a larger plan."
    )
    invitation_accept(person("bob@example.com"), sent.token)
    assert workspace.memberships.count() == 2
    # An invitation sent before the limit was lowered cannot take a seat that is not there.
    _override(workspace, members=10)
    late = invitation_create(owner, workspace, "dan@example.com", "viewer", request)
    _override(workspace, members=2)
    with pytest.raises(InvitationInvalid, match="limit is 2 members and 2 are"):
        invitation_accept(person("dan@example.com"), late.token)
    assert workspace.memberships.count() == 2


def test_the_per_document_caps_come_from_the_plan(owner, tenants_ready):
    workspace = personal_workspace(owner)
    _override(workspace, document_max_text_chars=100)
    document = _upload(owner, "long.pdf", _pdf(2, "capped"))
    document_services.document_ingest(document.id)
    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert "Silo accepts up to 100 per document." in document.error_message


# --- questions and tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "allowed"), [(1, True), (2, False)], ids=["just-under", "at"])
def test_the_questions_limit(owner, asked, allowed):
    workspace = personal_workspace(owner)
    _override(workspace, questions_per_day=2)
    for _ in range(asked):
        usage.question_admit(workspace)
    if allowed:
        usage.question_admit(workspace)
        return
    with pytest.raises(plans.LimitReached) as refused:
        usage.question_admit(workspace)
    assert str(refused.value) == (
        "This workspace's limit is 2 questions a day and 2 are used. The limit resets at midnight (UTC)."
    )
    assert WorkspaceUsage.objects.get(workspace=workspace, period="day").questions == 2


def test_the_tokens_limit_refuses_the_next_question_once_spent(owner):
    workspace = personal_workspace(owner)
    _override(workspace, tokens_per_month=100)
    usage.tokens_record(workspace.id, 99)
    usage.question_admit(workspace)  # 99 < 100: still allowed
    usage.tokens_record(workspace.id, 1)
    with pytest.raises(plans.LimitReached, match="limit is 100 model tokens a month and 100 are used"):
        usage.question_admit(workspace)
    assert WorkspaceUsage.objects.get(workspace=workspace, period="day").questions == 1


# --- operators --------------------------------------------------------------------------------------------------------


def test_tenants_plan_changes_the_plan_and_overrides_one_limit(owner, capsys):
    workspace = personal_workspace(owner)
    Plan.objects.create(name="team", label="Team", pages_per_month=50_000, questions_per_day=None)
    call_command("tenants", "plan", owner.email, "team")
    assert capsys.readouterr().out.strip() == f"{owner.email}: plan team"
    call_command("tenants", "plan", workspace.slug, "--set", "pages_per_month=25")
    assert capsys.readouterr().out.strip() == f'{owner.email}: plan team with {{\n  "pages_per_month": 25\n}}'
    limits = plans.workspace_limits(workspace)
    assert (limits.plan, limits["pages_per_month"], limits["questions_per_day"]) == ("team", 25, None)

    with pytest.raises(CommandError, match=r"No plan is called .gold.; plans: free, team\."):
        call_command("tenants", "plan", owner.email, "gold")
    with pytest.raises(CommandError, match="'pages=3': expected LIMIT=VALUE with LIMIT one of storage_bytes"):
        call_command("tenants", "plan", owner.email, "--set", "pages=3")
    with pytest.raises(CommandError, match="the value must be a whole number"):
        call_command("tenants", "plan", owner.email, "free", "--set", "pages_per_month=lots")
    assert plans.workspace_limits(workspace).plan == "team"  # a bad override changes nothing, not even the plan
    call_command("tenants", "plan", owner.email, "--set", "pages_per_month=default")
    assert plans.workspace_limits(workspace)["pages_per_month"] == 50_000


def test_tenants_usage_reports_usage_against_limits_most_expensive_first(owner, stranger, capsys):
    mine, theirs = personal_workspace(owner), personal_workspace(stranger)
    _upload(owner, "a.pdf", _pdf(3))
    usage.question_admit(mine)
    usage.tokens_record(theirs.id, 1_000_000)

    call_command("tenants", "usage", "--json")
    reports = json.loads(capsys.readouterr().out)
    assert [report["workspace"] for report in reports] == [stranger.email, owner.email]
    report = reports[1]
    assert (report["pages_this_month"], report["questions_today"], report["documents"], report["members"]) == (
        3, 1, 1, 1,
    )  # fmt: skip
    assert report["storage_bytes"] is None  # not sampled yet: the listing reaches no tenant database
    assert report["limits"]["pages_per_month"] == 5000 and report["plan"] == "free"
    assert {"pages_this_month", "questions_today", "storage_bytes", "documents", "limits"} <= set(report)

    call_command("tenants", "usage", owner.email)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["workspace", "plan", "documents", "pages/mo"]
    assert table[1].split()[:4] == [owner.email, "free", "1/100", "3/5,000"]
    assert table[-1] == "1 workspace(s), most expensive first"


def test_storage_is_sampled_by_the_scheduled_task_through_the_registry(owner, tenants_ready):
    from tenants.tasks import sample_workspace_usage

    workspace = personal_workspace(owner)
    result = sample_workspace_usage.apply().get()
    assert result["sampled"] == 1 and result["skipped"] == 0
    assignment = WorkspacePlan.objects.get(workspace=workspace)
    row = VectorDatabase.objects.get(workspace=workspace)
    import psycopg

    from tenants.services import vector_database_credentials

    with psycopg.connect(vector_database_credentials(row)["dsn"]) as tenant:
        (size,) = tenant.execute("SELECT pg_database_size(current_database())").fetchone()
    assert abs(assignment.storage_bytes - size) < 1024 * 1024
    assert assignment.storage_sampled_at is not None


@pytest.fixture
def tenants_ready(owner):
    from tenants import services

    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    assert services.vector_database_provision(row.id).status == VectorDatabase.Status.READY


def test_usage_columns_in_tenants_list(owner, tenants_ready, capsys):
    _upload(owner, "a.pdf", _pdf(4))
    call_command("tenants", "list")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-4:] == ["plan", "pages/mo", "questions/day", "storage"]
    assert table[1].split()[-4:] == ["free", "4/5,000", "0/1,000", "-"]
    call_command("tenants", "list", "--json")
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["usage"]["pages_this_month"] == 4


def test_the_admin_lists_usage_most_expensive_first_and_changes_a_plan(client, django_user_model, owner, stranger):
    from django.urls import reverse

    operator = django_user_model.objects.create_superuser(email="ops@example.com", password="operator pass 123")
    cheap, costly = plans.workspace_plan(personal_workspace(owner)), plans.workspace_plan(personal_workspace(stranger))
    usage.tokens_record(costly.workspace_id, 5_000_000)
    Plan.objects.create(name="team", label="Team", pages_per_month=50_000)
    client.force_login(operator)

    listing = client.get(reverse("admin:tenants_workspaceplan_changelist")).content.decode()
    assert listing.index(stranger.email.split("@")[0]) < listing.index(owner.email.split("@")[0])
    assert "5000000" in listing or "5,000,000" in listing

    change = reverse("admin:tenants_workspaceplan_change", args=[cheap.id])
    team = Plan.objects.get(name="team")
    refused = client.post(change, {"plan": team.id, "overrides": '{"pages": 3}'})
    assert refused.status_code == 200 and "expected LIMIT=VALUE" in refused.content.decode()
    assert plans.workspace_limits(cheap.workspace_id).plan == "free"  # nothing changed
    saved = client.post(change, {"plan": team.id, "overrides": '{"pages_per_month": 25}'})
    assert saved.status_code == 302
    limits = plans.workspace_limits(cheap.workspace_id)
    assert (limits.plan, limits["pages_per_month"]) == ("team", 25)


def test_the_account_page_shows_usage_bars_from_the_main_database(owner):
    from tests.workspaces import client_in

    workspace = personal_workspace(owner)
    _override(workspace, pages_per_month=10)
    _upload(owner, "a.pdf", _pdf(9))
    page = client_in(owner).get("/account/").content.decode()
    assert "Usage of" in page
    assert "9 of 10" in page and 'max="100" value="90"' in page and "usage-bar-high" in page
    assert "Questions today" in page and "0 of 1,000" in page


RESERVE_THEN_HANG = """
import sys, time
import django
django.setup()
from django.db import transaction
from tenants import usage
from tenants.models import Workspace
with transaction.atomic():
    usage.upload_admit(Workspace.objects.get(id=int(sys.argv[1])), int(sys.argv[2]))
    print("reserved", flush=True)
    time.sleep(60)
"""


def test_a_worker_killed_mid_upload_leaves_no_count_and_the_retry_counts_once(owner):
    """A real process reserves pages in an upload's transaction and is killed (SIGKILL) before it commits."""
    import subprocess
    import sys

    from django.conf import settings

    from tests.conftest import _worker_environment

    workspace = personal_workspace(owner)
    _override(workspace, pages_per_month=10)
    environment = _worker_environment(connections["default"].settings_dict["NAME"])
    environment["DJANGO_SETTINGS_MODULE"] = "config.settings"
    worker = subprocess.Popen(
        [sys.executable, "-c", RESERVE_THEN_HANG, str(workspace.id), "8"],
        cwd=settings.BASE_DIR, env=environment, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "reserved"
    finally:
        worker.kill()  # dies inside the transaction: the reservation goes with it
        worker.wait(30)

    assert _pages_used(workspace) == 0
    document = _upload(owner, "retried.pdf", _pdf(8, "retried"))  # the retry gets the whole allowance
    assert (document.pages_metered, _pages_used(workspace)) == (8, 8)
