"""Reading a chat completion's event stream as JSON (chat.services reads the OpenAI client's raw streaming response;
the whole path against the emulator is in test_chat.py and test_chat_metering.py)."""

import json

import httpx2
import openai
import pytest

from chat.services import _answer_pieces

REQUEST = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")


def chunk(content: str | None = None, usage: dict | None = None, finish: str | None = None) -> str:
    choices = (
        []
        if usage
        else [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}]
    )
    return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": choices, "usage": usage})


def test_the_pieces_are_the_chunks_content_in_order_and_the_usage_report_is_metered():
    lines = [
        chunk(""),  # the role chunk: no content
        "",
        chunk("Two"),
        "",
        ": a comment line servers may send",
        chunk(" years"),
        chunk(" [1]."),
        chunk(finish="stop"),
        chunk(usage={"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53}),
        "data: [DONE]",
        chunk("after the end"),  # never read
    ]
    meter: dict = {}

    assert list(_answer_pieces(iter(lines), REQUEST, meter)) == ["Two", " years", " [1]."]
    assert meter == {"tokens": 53}


def test_an_error_inside_a_stream_that_had_begun_raises_the_clients_api_error_after_the_pieces_before_it():
    lines = [chunk("Two"), 'data: {"error": {"message": "The server had an error", "type": "server_error"}}']
    pieces = _answer_pieces(iter(lines), REQUEST, None)

    assert next(pieces) == "Two"
    with pytest.raises(openai.APIError, match="The server had an error"):
        next(pieces)
