import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from chat import services
from tenants import usage
from tenants.management.lookup import membership_for_command, user_for_command
from tenants.models import User, Workspace
from tenants.permissions import Action
from tenants.plans import LimitReached
from tenants.services import TenantDatabaseNotReady

CITATION_FIELDS = ("document_id", "title", "page", "page_end", "location", "ocr", "score", "text", "quote")


@dataclass(frozen=True)
class _Question:
    text: str
    conversation: str | None  # batch label: questions with the same label are one conversation, asked in order
    line: int | None = None  # in the batch file, for error messages


class Command(BaseCommand):
    help = (
        "Ask a question of a user's documents (or one of them) and print the answer with its citations. "
        "--batch FILE asks many in one process (the embedding model loads once): one question per line, or JSON "
        'lines {"conversation": "label", "question": "..."} where lines with the same label are one conversation.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, metavar="EMAIL")
        parser.add_argument("--workspace", metavar="SLUG", default=None, help="Default: the user's personal one.")
        parser.add_argument("--document", type=int, metavar="ID", help="Only this document.")
        parser.add_argument("--k", type=int, default=None, help="Passages to retrieve (default RETRIEVAL_K).")
        parser.add_argument("--retrieve-only", action="store_true", help="Print the passages; do not answer.")
        parser.add_argument("--vector-only", action="store_true", help="Vector similarity without full-text fusion.")
        parser.add_argument("--json", action="store_true", help="One JSON object per question.")
        parser.add_argument("--batch", type=Path, metavar="FILE", help="Questions from FILE; JSON lines out.")
        parser.add_argument("question", nargs="?", default=None)

    def handle(self, *args, **options) -> None:
        user = user_for_command(options["user"])
        workspace = membership_for_command(user, options["workspace"], Action.CHAT).workspace
        if options["k"] is not None and options["k"] < 1:
            raise CommandError(f"--k {options['k']}: give at least 1 passage")
        if options["batch"] and options["question"]:
            raise CommandError("give a QUESTION or --batch FILE, not both")
        if options["batch"]:
            questions, as_json = _batch_questions(options["batch"]), True
        elif options["question"]:
            questions, as_json = [_Question(options["question"], None)], options["json"]
        else:
            raise CommandError("give a QUESTION or --batch FILE")
        histories: dict[str, list[services.Exchange]] = {}
        try:
            for question in questions:
                history = histories.setdefault(question.conversation, []) if question.conversation else []
                self._ask(user, workspace, question, history, options, as_json)
        except Http404:
            where = user.email if workspace.personal else f"workspace {workspace.slug}"
            raise CommandError(f"{where} has no document {options['document']}") from None
        except TenantDatabaseNotReady as error:
            label = workspace.label
            raise CommandError(f"{label}'s database is {error.status}") from None

    def _ask(
        self, user: User, workspace: Workspace, question: _Question, history: list, options: dict, as_json: bool
    ) -> None:
        try:
            text = services.question_validate(question.text)
        except services.QuestionRejected as error:
            where = f"line {question.line}: " if question.line else ""
            raise CommandError(f"{where}{error}") from None
        if not options["retrieve_only"]:  # an answer is metered as in the chat; retrieval alone is not
            try:
                usage.question_admit(workspace)
            except LimitReached as error:
                raise CommandError(str(error)) from None
        retrieval = services.passages_for_turn(
            user,
            text,
            history,
            options["document"],
            k=options["k"],
            hybrid=not options["vector_only"],
            workspace=workspace,
        )
        answer = ""
        meter: dict = {}
        if not options["retrieve_only"]:
            pieces = services.answer_stream(text, retrieval, history, meter)
            if as_json:
                answer = "".join(pieces)
            else:
                for piece in pieces:
                    answer += piece
                    self.stdout.write(piece, ending="")
                    self.stdout.flush()
                self.stdout.write("")
            usage.tokens_record(workspace.id, meter.get("tokens") or usage.tokens_estimate(text, answer))
        # The next question of the conversation may refer to this one's answer: without a model, the quotes.
        remembered = answer or (services.extractive_answer(retrieval.citations) if not settings.OPENAI_API_KEY else "")
        history.append(services.Exchange(text, remembered, retrieval.found))
        if as_json:
            record: dict[str, Any] = {"conversation": question.conversation} if options["batch"] else {}
            record.update(
                {
                    "question": text,
                    "answer": answer,
                    "found": retrieval.found,
                    "relevance": retrieval.relevance,
                    "citations": [
                        {key: value for key, value in asdict(c).items() if key in CITATION_FIELDS}
                        for c in retrieval.citations
                    ],
                }
            )
            self.stdout.write(json.dumps(record))
            return
        if options["retrieve_only"] and not retrieval.found:
            self.stdout.write(services.NO_DOCUMENTS_ANSWER if retrieval.no_documents else services.NOT_FOUND_ANSWER)
        for citation in retrieval.citations:
            pages = str(citation.page) if citation.page == citation.page_end else f"{citation.page}-{citation.page_end}"
            line = f"[{citation.number}] {citation.title}, {citation.location or f'p. {pages}'}"
            if citation.ocr:
                line += " (OCR)"
            if options["retrieve_only"]:
                line += f" ({citation.score:.3f}): {citation.text[:160]!r}"
            self.stdout.write(line)


def _batch_questions(path: Path) -> list[_Question]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CommandError(f"--batch {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"--batch {path}: cannot be read ({error})") from None
    questions = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if not line.startswith("{"):
            questions.append(_Question(line, None, number))
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise CommandError(f"--batch {path}, line {number}: not valid JSON ({error.msg})") from None
        question, label = entry.get("question"), entry.get("conversation")
        if not isinstance(question, str) or not question.strip():
            raise CommandError(f'--batch {path}, line {number}: "question" must be a non-empty string')
        if label is not None and not isinstance(label, str | int):
            raise CommandError(f'--batch {path}, line {number}: "conversation" must be a string')
        questions.append(_Question(question, None if label is None else str(label), number))
    if not questions:
        raise CommandError(f"--batch {path}: no questions in it")
    return questions
