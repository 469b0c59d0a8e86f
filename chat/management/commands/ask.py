import json
from dataclasses import asdict
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import services
from tenants.management.lookup import user_for_command
from tenants.models import User
from tenants.services import TenantDatabaseNotReady


class Command(BaseCommand):
    help = "Ask a question of a user's documents (or one of them) and print the answer with its citations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, metavar="EMAIL")
        parser.add_argument("--document", type=int, metavar="ID", help="Only this document.")
        parser.add_argument("--k", type=int, default=None, help="Passages to retrieve (default RETRIEVAL_K).")
        parser.add_argument("--retrieve-only", action="store_true", help="Print the passages; do not answer.")
        parser.add_argument("--vector-only", action="store_true", help="Vector similarity without full-text fusion.")
        parser.add_argument("--json", action="store_true", help="One JSON object per question.")
        parser.add_argument("--batch", type=Path, metavar="FILE", help="One question per line; JSON lines out.")
        parser.add_argument("question", nargs="?", default=None)

    def handle(self, *args, **options) -> None:
        user = user_for_command(options["user"])
        if options["batch"]:
            questions = [line.strip() for line in options["batch"].read_text().splitlines() if line.strip()]
            as_json = True
        elif options["question"]:
            questions, as_json = [options["question"]], options["json"]
        else:
            raise CommandError("give a QUESTION or --batch FILE")
        for question in questions:
            self._ask(user, question, options, as_json)

    def _ask(self, user: User, question: str, options: dict, as_json: bool) -> None:
        try:
            question = services.question_validate(question)
            citations = services.chunks_retrieve(
                user, question, options["document"], k=options["k"], hybrid=not options["vector_only"]
            )
        except services.QuestionRejected as error:
            raise CommandError(str(error)) from None
        except TenantDatabaseNotReady as error:
            raise CommandError(f"{user.email}'s database is {error.status}") from None
        answer = ""
        if not options["retrieve_only"]:
            pieces = services.answer_stream(question, citations, history=[])
            if as_json:
                answer = "".join(pieces)
            else:
                for piece in pieces:
                    answer += piece
                    self.stdout.write(piece, ending="")
                    self.stdout.flush()
                self.stdout.write("")
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "question": question,
                        "answer": answer,
                        "citations": [
                            {key: value for key, value in asdict(c).items() if key != "number"} for c in citations
                        ],
                    }
                )
            )
        elif options["retrieve_only"]:
            for citation in citations:
                self.stdout.write(
                    f"[{citation.number}] {citation.title} p.{citation.page}-{citation.page_end} "
                    f"({citation.score:.3f}): {citation.text[:160]!r}"
                )
