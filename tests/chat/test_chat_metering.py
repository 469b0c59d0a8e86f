"""Questions and model tokens are metered in the chat service (issue 21): one question per answer, the tokens the
model reports in its streamed usage (an estimate in the extractive mode), nothing for `ask --retrieve-only`, and a
question over the day's limit is refused before any work, with the limit and when it resets."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from chat import services
from documents import services as document_services
from tenants import plans, usage
from tenants import services as tenant_services
from tenants.models import VectorDatabase, WorkspaceUsage
from tests.emulators.openai import CHAT_COMPLETIONS, OpenAIEmulator
from tests.helpers import personal_workspace
from tests.pdf_factory import text_pdf
from tests.workspaces import erase_databases

pytestmark = pytest.mark.django_db(transaction=True)
API_KEY = "sk-emulator-metering"
PAGES = ["The harbour lamp is cleaned every morning at dawn by the keeper.", "High tide is at noon in summer."]


@pytest.fixture
def workspace(owner, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    assert tenant_services.vector_database_provision(row.id).status == VectorDatabase.Status.READY
    document = document_services.document_upload(owner, ContentFile(text_pdf(PAGES), name="harbour.pdf"), False)
    document_services.document_ingest(document.id)
    yield personal_workspace(owner)
    erase_databases()


@pytest.fixture
def emulator(settings):
    with OpenAIEmulator(api_key=API_KEY) as running:
        settings.OPENAI_API_KEY = API_KEY
        settings.OPENAI_BASE_URL = running.base_url
        settings.EMBEDDING_MODEL = "all-MiniLM-L6-v2"
        settings.EMBEDDING_DIMENSIONS = 384
        yield running


def _counters(workspace) -> tuple[int, int]:
    day = WorkspaceUsage.objects.filter(workspace=workspace, period="day").first()
    month = WorkspaceUsage.objects.filter(workspace=workspace, period="month").first()
    return (day.questions if day else 0, month.tokens if month else 0)


def test_an_answer_counts_one_question_and_the_tokens_the_model_reports(owner, workspace, emulator):
    events = list(services.chat_turn(owner, "When is the harbour lamp cleaned?"))
    assert events[-1].kind == "done", events[-1]

    (request,) = [r for r in emulator.requests_to(CHAT_COMPLETIONS) if r.stream]
    tokens, _, prompt_tokens = emulator.chat_answer({"model": request.model, "messages": request.messages})
    assert _counters(workspace) == (1, prompt_tokens + len(tokens))  # the usage chunk's total_tokens


def test_a_follow_ups_rewrite_counts_its_tokens_beside_the_answers(owner, workspace, emulator):
    first = list(services.chat_turn(owner, "When is the harbour lamp cleaned?"))
    emulator.rewrite = "When is high tide in summer?"

    follow_up = list(services.chat_turn(owner, "And the tide?", conversation_id=first[0].data["id"]))

    assert follow_up[-1].kind == "done", follow_up[-1]
    used = 0
    for request in emulator.requests_to(CHAT_COMPLETIONS):  # two answers and, between them, one rewrite
        tokens, _, prompt_tokens = emulator.chat_answer({"model": request.model, "messages": request.messages})
        used += prompt_tokens + len(tokens)
    assert len(emulator.requests_to(CHAT_COMPLETIONS)) == 3
    assert _counters(workspace) == (2, used)  # two questions; the rewrite's tokens count, it is no question


def test_the_extractive_mode_counts_an_estimate(owner, workspace, settings):
    settings.OPENAI_API_KEY = ""
    events = list(services.chat_turn(owner, "When is the harbour lamp cleaned?"))
    answer = "".join(event.data["text"] for event in events if event.kind == "token")
    assert _counters(workspace) == (1, usage.tokens_estimate("When is the harbour lamp cleaned?", answer))


def test_a_question_over_the_days_limit_is_refused_before_any_work(owner, workspace, settings):
    settings.OPENAI_API_KEY = ""
    plans.workspace_plan_change(workspace, overrides=["questions_per_day=1"])
    assert list(services.chat_turn(owner, "When is the harbour lamp cleaned?"))[-1].kind == "done"
    conversations_before = len(services.conversations_for_user(owner))

    events = list(services.chat_turn(owner, "When is high tide?"))

    assert [(event.kind, event.data) for event in events] == [
        ("error", {"message": "This workspace's limit is 1 questions a day and 1 are used. The limit resets at "
                              "midnight (UTC).", "limit": "questions_per_day"}),
    ]  # fmt: skip
    assert len(services.conversations_for_user(owner)) == conversations_before  # nothing stored
    assert _counters(workspace)[0] == 1


def test_ask_meters_answers_but_not_retrieve_only(owner, workspace, settings, capsys):
    settings.OPENAI_API_KEY = ""
    call_command("ask", "--user", owner.email, "--retrieve-only", "When is the harbour lamp cleaned?")
    assert _counters(workspace) == (0, 0)
    call_command("ask", "--user", owner.email, "When is the harbour lamp cleaned?")
    questions, tokens = _counters(workspace)
    assert questions == 1 and tokens > 0
    plans.workspace_plan_change(workspace, overrides=["questions_per_day=1"])
    with pytest.raises(CommandError, match="limit is 1 questions a day and 1 are used"):
        call_command("ask", "--user", owner.email, "When is high tide?")
    call_command("ask", "--user", owner.email, "--retrieve-only", "When is high tide?")  # still allowed
    capsys.readouterr()


def test_the_plans_cap_on_answers_in_progress_applies(owner):
    from chat.limits import ChatLimitReached, chat_stream_admit

    workspace = personal_workspace(owner)
    plans.workspace_plan_change(workspace, overrides=["chat_max_concurrent_streams=1"])
    cap = plans.workspace_limit(workspace, "chat_max_concurrent_streams")
    slot = chat_stream_admit(owner.pk, cap)
    try:
        with pytest.raises(ChatLimitReached, match="You already have 1 answer in progress"):
            chat_stream_admit(owner.pk, cap)
    finally:
        slot.release()
    chat_stream_admit(owner.pk, cap).release()  # the slot is free again
