"""The OpenAI emulator, driven by langchain-openai's real ChatOpenAI and OpenAIEmbeddings over real sockets.

OpenAIEmbeddings runs with check_embedding_ctx_length=False: its default tokenises with tiktoken first, whose data file
is downloaded at run time and cannot be here; it is also what langchain-openai advises for compatible servers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from config.settings_paths import BASE_DIR
from tests.emulators.openai import (
    CHAT_COMPLETIONS,
    EMBEDDINGS,
    MODELS,
    NO_SOURCE_ANSWER,
    OpenAIEmulator,
    RecordedRequest,
    grounded_answer,
    split_into_tokens,
)

API_KEY = "sk-test-emulator-key"
SOURCES_PROMPT = (
    "Answer from the numbered sources only and cite them.\n"
    "[1] The warranty lasts two years. It covers parts and labour.\n"
    "[2] Returns are accepted within 30 days."
)
QUESTION = "How long is the warranty?"
MESSAGES = [("system", SOURCES_PROMPT), ("user", QUESTION)]
EXPECTED_ANSWER = "According to [1], the warranty lasts two years."


@pytest.fixture(scope="module")
def running_emulator():
    emulator = OpenAIEmulator(api_key=API_KEY).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(running_emulator: OpenAIEmulator) -> OpenAIEmulator:
    running_emulator.reset()
    running_emulator.answer = None
    yield running_emulator
    running_emulator.reset()


def chat_model(emulator: OpenAIEmulator, **options) -> ChatOpenAI:
    options.setdefault("api_key", API_KEY)
    options.setdefault("max_retries", 0)
    return ChatOpenAI(model="gpt-4o-mini", temperature=0, base_url=emulator.base_url, **options)


def embeddings_model(emulator: OpenAIEmulator, **options) -> OpenAIEmbeddings:
    options.setdefault("max_retries", 0)
    return OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=emulator.base_url,
        api_key=API_KEY,
        check_embedding_ctx_length=False,
        **options,
    )


def post_embeddings(emulator: OpenAIEmulator, body: dict, api_key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.post(emulator.base_url + "/embeddings", json=body, headers=headers, timeout=30)


def cosine(first: list[float], second: list[float]) -> float:
    a, b = np.asarray(first), np.asarray(second)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- chat completions ------------------------------------------------------------------------------------------------


def test_stream_delivers_the_grounded_answer_in_many_chunks_that_join_to_it(emulator):
    chunks = list(chat_model(emulator).stream(MESSAGES))

    contents = [chunk.content for chunk in chunks]
    assert "".join(contents) == EXPECTED_ANSWER
    assert [content for content in contents if content] == split_into_tokens(EXPECTED_ANSWER)
    assert len(split_into_tokens(EXPECTED_ANSWER)) == 12
    assert sum(chunks[1:], chunks[0]).response_metadata["finish_reason"] == "stop"
    assert emulator.request_counts == {CHAT_COMPLETIONS: 1}
    assert emulator.requests == [RecordedRequest(CHAT_COMPLETIONS, 200, model="gpt-4o-mini", stream=True)]


def test_stream_sends_the_first_token_after_the_latency_and_the_rest_one_by_one(emulator):
    emulator.latency_seconds = 0.3
    emulator.token_delay_seconds = 0.05
    started = time.monotonic()
    arrivals = [time.monotonic() - started for chunk in chat_model(emulator).stream(MESSAGES) if chunk.content]

    assert len(arrivals) == 12
    assert arrivals[0] >= 0.3
    # Eleven delays of 50 ms separate the first token from the last: they were not sent in one piece.
    assert arrivals[-1] - arrivals[0] >= 0.5


def test_stream_reports_usage_in_a_last_chunk_when_asked(emulator):
    chunks = list(chat_model(emulator, stream_usage=True).stream(MESSAGES))

    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage["output_tokens"] == 12
    assert usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + 12
    assert "".join(chunk.content for chunk in chunks) == EXPECTED_ANSWER


def test_invoke_without_streaming_returns_the_same_answer_with_usage(emulator):
    message = chat_model(emulator).invoke(MESSAGES)

    assert message.content == EXPECTED_ANSWER
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata["output_tokens"] == 12


def test_max_tokens_cuts_the_answer_with_finish_reason_length(emulator):
    message = chat_model(emulator, max_tokens=4).invoke(MESSAGES)

    assert message.content == "According to [1"
    assert message.response_metadata["finish_reason"] == "length"


def test_answer_is_configurable_as_text_or_function_of_the_messages(emulator):
    emulator.answer = "Fixed answer."
    assert chat_model(emulator).invoke(MESSAGES).content == "Fixed answer."

    emulator.answer = lambda messages: f"{len(messages)} messages, last from {messages[-1]['role']}"
    assert chat_model(emulator).invoke(MESSAGES).content == "2 messages, last from user"


def test_grounded_answer_quotes_the_first_numbered_source_and_says_so_when_there_is_none():
    cite_instruction = {"role": "system", "content": "Cite sources as [n].\n\n[3] Page 4: Invoices are due in 14 days."}
    assert grounded_answer([cite_instruction, {"role": "user", "content": "When?"}]) == (
        "According to [3], page 4: Invoices are due in 14 days."
    )
    content_parts = {"role": "user", "content": [{"type": "text", "text": "[2] RAID 5 tolerates one disk failure"}]}
    assert grounded_answer([content_parts]) == "According to [2], RAID 5 tolerates one disk failure."
    assert grounded_answer([{"role": "user", "content": "Hello?"}]) == NO_SOURCE_ANSWER


def test_fifty_concurrent_streams_with_a_300_ms_first_token_are_served_in_parallel(emulator):
    emulator.latency_seconds = 0.3
    emulator.token_delay_seconds = 0.05
    model = chat_model(emulator)

    async def answer() -> str:
        return "".join([chunk.content async for chunk in model.astream(MESSAGES)])

    async def fifty_answers() -> list[str]:
        return await asyncio.gather(*(answer() for _ in range(50)))

    started = time.monotonic()
    answers = asyncio.run(fifty_answers())
    elapsed = time.monotonic() - started

    assert answers == [EXPECTED_ANSWER] * 50
    assert emulator.request_counts == {CHAT_COMPLETIONS: 50}
    assert emulator.peak_streams_in_flight == 50
    # One at a time would take 50 x (0.3 s + 11 x 0.05 s) = 42 s.
    assert elapsed < 4


# --- embeddings ------------------------------------------------------------------------------------------------------


def test_embeddings_have_1536_unit_length_dimensions_and_are_deterministic(emulator):
    text = "Quarterly revenue grew in Europe."
    first = embeddings_model(emulator).embed_documents([text])[0]
    again = embeddings_model(emulator).embed_query(text)
    with OpenAIEmulator(api_key=API_KEY) as another_emulator:
        elsewhere = embeddings_model(another_emulator).embed_query(text)

    assert len(first) == 1536
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert first == again == elsewhere


def test_texts_sharing_words_score_a_higher_cosine_than_unrelated_ones(emulator):
    query, related, unrelated = embeddings_model(emulator).embed_documents(
        [
            "How long does the warranty last?",
            "The warranty lasts two years and covers parts.",
            "Penguins huddle together through the Antarctic winter.",
        ]
    )

    assert cosine(query, related) > 0.2
    assert cosine(query, related) > cosine(query, unrelated) + 0.2


def test_one_request_embeds_a_hundred_texts(emulator):
    vectors = embeddings_model(emulator).embed_documents([f"chunk number {index}" for index in range(100)])

    assert len(vectors) == 100
    assert emulator.request_counts == {EMBEDDINGS: 1}
    assert emulator.requests == [RecordedRequest(EMBEDDINGS, 200, model="text-embedding-3-small", input_count=100)]
    assert emulator.inputs_embedded == 100


def test_openai_embeddings_batches_2049_texts_by_its_chunk_size(emulator):
    vectors = embeddings_model(emulator).embed_documents([f"text {index}" for index in range(2049)])

    assert len(vectors) == 2049
    assert [request.input_count for request in emulator.requests_to(EMBEDDINGS)] == [1000, 1000, 49]
    assert {request.status for request in emulator.requests} == {200}


def test_the_endpoint_takes_2048_inputs_and_refuses_2049_like_openai(emulator):
    accepted = post_embeddings(
        emulator, {"model": "text-embedding-3-small", "input": ["word"] * 2048, "encoding_format": "base64"}
    )
    refused = post_embeddings(emulator, {"model": "text-embedding-3-small", "input": ["word"] * 2049})

    assert accepted.status_code == 200
    assert len(accepted.json()["data"]) == 2048
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "message": "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert [request.status for request in emulator.requests] == [200, 400]
    assert emulator.inputs_embedded == 2048


def test_the_endpoint_answers_in_the_documented_shape_as_floats_or_base64(emulator):
    body = {"model": "text-embedding-3-small", "input": ["first text", "second text"]}
    as_floats = post_embeddings(emulator, {**body, "encoding_format": "float"}).json()
    as_base64 = post_embeddings(emulator, {**body, "encoding_format": "base64"}).json()

    assert as_floats["object"] == "list"
    assert as_floats["model"] == "text-embedding-3-small"
    assert as_floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert [(item["object"], item["index"]) for item in as_floats["data"]] == [("embedding", 0), ("embedding", 1)]
    for floats, encoded in zip(as_floats["data"], as_base64["data"]):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert decoded.tolist() == pytest.approx(floats["embedding"], abs=1e-7)


def test_the_endpoint_takes_a_single_string_token_arrays_and_dimensions(emulator):
    single = post_embeddings(emulator, {"model": "text-embedding-3-small", "input": "one text"}).json()
    tokens = post_embeddings(emulator, {"model": "text-embedding-3-small", "input": [[9906, 1917], [9906]]}).json()
    shortened = post_embeddings(
        emulator, {"model": "text-embedding-3-large", "input": "one text", "dimensions": 256}
    ).json()
    large = post_embeddings(emulator, {"model": "text-embedding-3-large", "input": "one text"}).json()

    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 1536
    assert [len(item["embedding"]) for item in tokens["data"]] == [1536, 1536]
    assert tokens["usage"]["prompt_tokens"] == 3
    assert len(shortened["data"][0]["embedding"]) == 256
    assert len(large["data"][0]["embedding"]) == 3072


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"model": "text-embedding-ada-002", "input": "x", "dimensions": 256},
            400,
            "This model does not support specifying dimensions.",
        ),
        (
            {"model": "text-embedding-3-small", "input": ""},
            400,
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        ),
        (
            {"model": "text-embedding-3-small", "input": []},
            400,
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        ),
        (
            {"model": "no-such-model", "input": "x"},
            404,
            "The model `no-such-model` does not exist or you do not have access to it.",
        ),
    ],
)
def test_the_endpoint_refuses_what_openai_refuses(emulator, body, status, message):
    response = post_embeddings(emulator, body)

    assert response.status_code == status
    assert response.json()["error"]["message"] == message
    assert emulator.inputs_embedded == 0


# --- authentication --------------------------------------------------------------------------------------------------


def test_a_request_without_a_key_gets_401_in_openais_error_shape(emulator):
    response = post_embeddings(emulator, {"model": "text-embedding-3-small", "input": "x"}, api_key=None)

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)
    assert emulator.inputs_embedded == 0


def test_a_wrong_key_raises_authentication_error_without_retrying(emulator):
    with pytest.raises(openai.AuthenticationError) as raised:
        chat_model(emulator, api_key="sk-wrong-key-123456", max_retries=2).invoke(MESSAGES)

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert emulator.requests == [RecordedRequest(CHAT_COMPLETIONS, 401, model="gpt-4o-mini")]


# --- faults ----------------------------------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_retried_by_the_client_and_then_succeeds(emulator):
    emulator.fail_next(429, endpoint=CHAT_COMPLETIONS, retry_after_seconds=0.3)
    started = time.monotonic()

    chunks = list(chat_model(emulator, max_retries=2).stream(MESSAGES))

    assert "".join(chunk.content for chunk in chunks) == EXPECTED_ANSWER
    assert [request.status for request in emulator.requests_to(CHAT_COMPLETIONS)] == [429, 200]
    # The client waited as retry-after-ms told it.
    assert time.monotonic() - started >= 0.3


def test_a_429_answer_carries_retry_after_and_openais_rate_limit_error(emulator):
    emulator.fail_next(429, retry_after_seconds=1.5)

    response = post_embeddings(emulator, {"model": "text-embedding-3-small", "input": "x"})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["type"] == "requests"


def test_a_500_on_every_call_surfaces_after_bounded_retries(emulator):
    emulator.fault_rate = 1.0
    emulator.fault_status = 500

    with pytest.raises(openai.InternalServerError) as raised:
        chat_model(emulator, max_retries=2).invoke(MESSAGES)

    assert raised.value.status_code == 500
    assert emulator.request_counts == {CHAT_COMPLETIONS: 3}
    assert {request.status for request in emulator.requests} == {500}


def test_a_503_on_embeddings_is_retried_and_the_batch_is_embedded_once(emulator):
    emulator.fail_next(503, endpoint=EMBEDDINGS, retry_after_seconds=0.05)

    vectors = embeddings_model(emulator, max_retries=1).embed_documents(["alpha", "beta"])

    assert len(vectors) == 2
    assert [request.status for request in emulator.requests_to(EMBEDDINGS)] == [503, 200]
    assert emulator.inputs_embedded == 2


def test_a_stream_dropped_mid_answer_raises_in_the_consumer_after_the_tokens_sent(emulator):
    emulator.drop_stream_next(after_tokens=3)
    received = []

    with pytest.raises(openai.APIConnectionError):
        for chunk in chat_model(emulator, max_retries=2).stream(MESSAGES):
            received.append(chunk.content)

    assert received == ["", "According", " to", " ["]
    assert emulator.requests == [RecordedRequest(CHAT_COMPLETIONS, 200, model="gpt-4o-mini", stream=True, dropped=True)]
    # The emulator keeps serving after the drop.
    assert chat_model(emulator).invoke(MESSAGES).content == EXPECTED_ANSWER


def test_the_fault_rate_is_reproducible_from_the_seed():
    def statuses(emulator: OpenAIEmulator) -> list[int]:
        emulator.fault_rate = 0.5
        with httpx.Client(base_url=emulator.base_url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            return [client.get("/models").status_code for _ in range(20)]

    with OpenAIEmulator(api_key=API_KEY, seed=7) as first, OpenAIEmulator(api_key=API_KEY, seed=7) as second:
        first_statuses, second_statuses = statuses(first), statuses(second)

    assert first_statuses == second_statuses
    assert set(first_statuses) == {200, 500}


# --- models and running by hand --------------------------------------------------------------------------------------


def test_models_lists_the_chat_and_embedding_models(emulator):
    response = httpx.get(emulator.base_url + "/models", headers={"Authorization": f"Bearer {API_KEY}"})

    models = {model["id"] for model in response.json()["data"]}
    assert response.json()["object"] == "list"
    assert {"gpt-4o-mini", "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"} <= models
    assert emulator.request_counts == {MODELS: 1}


def test_runs_by_hand_on_the_given_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.emulators.openai", "--port", str(port), "--api-key", API_KEY],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[1] Sky is blue. Why?"}]},
        )
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert first_line == f"OpenAI emulator on http://127.0.0.1:{port}/v1; run the app with:\n"
    assert json.loads(response.text)["choices"][0]["message"]["content"] == "According to [1], sky is blue."
