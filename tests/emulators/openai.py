"""An emulator of the OpenAI HTTP API (the parts Silo uses), served over real HTTP so the real openai/langchain-openai
client code runs against it.

    POST /v1/embeddings         input as a string, a list of strings, a token array or a list of token arrays (at most
                                2,048 inputs, none empty); model, dimensions (text-embedding-3-* only), encoding_format
                                float or base64 (the openai python client asks for base64 unless told otherwise)
    POST /v1/chat/completions   non-streaming, or `stream: true` as server-sent events (role chunk, one chunk per small
                                token, a finish_reason chunk, the usage chunk when stream_options.include_usage, then
                                `data: [DONE]`); max_tokens / max_completion_tokens cut the answer
                                (finish_reason length)
    GET  /v1/models             the chat and embedding models it knows

Every request needs `Authorization: Bearer <api_key>` (401 with OpenAI's error shape otherwise). Errors use OpenAI's
shape: {"error": {"message", "type", "param", "code"}}.

Embeddings are deterministic feature hashes of lowercased word unigrams and bigrams (token ids for token arrays),
unit-normalised, so texts that share words get close vectors and retrieval tests behave sensibly.

The chat answer is `answer` when set (a string or a function of the messages), otherwise `grounded_answer()`: it
quotes the first numbered source ("[1] ...") found in the system and last user messages, e.g.
"According to [1], the warranty lasts two years." so tests can check that citations flow through. A request whose
system message asks for a "standalone question" (a follow-up rewritten with its conversation) is answered by
`rewrite` (a string or a function of the messages), by default the last user message unchanged, as a model does for a
question that already stands alone.

Switches (attributes, also CLI flags): `latency_seconds` before every response (and so before the first token),
`token_delay_seconds` between streamed chunks, `fault_rate` (seeded, reproducible) answered with `fault_status`,
`drop_streams_after_tokens` for every stream, and a queue of one-off faults: `fail_next(429, retry_after_seconds=...)`,
`drop_stream_next(after_tokens=N)`.
Counters: `request_counts[endpoint]` (every request that reached an endpoint, errors included), `requests` (what
each got back), `inputs_embedded`, `streams_in_flight` and `peak_streams_in_flight`.

By hand:  python -m tests.emulators.openai --port 8766
then run the app with OPENAI_BASE_URL=http://127.0.0.1:8766/v1 OPENAI_API_KEY=<the key it prints>.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import random
import re
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler

import numpy as np

from tests.emulators.serving import ServedEmulator

CHAT_COMPLETIONS = "chat.completions"
EMBEDDINGS = "embeddings"
MODELS = "models"
ENDPOINTS = (CHAT_COMPLETIONS, EMBEDDINGS, MODELS)

ROUTES = {
    ("POST", "/v1/chat/completions"): CHAT_COMPLETIONS,
    ("POST", "/v1/embeddings"): EMBEDDINGS,
    ("GET", "/v1/models"): MODELS,
}

# Native dimensions; only the text-embedding-3 family accepts `dimensions`.
EMBEDDING_MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
SHORTENABLE_EMBEDDING_MODELS = frozenset({"text-embedding-3-small", "text-embedding-3-large"})
CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-3.5-turbo")

MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192

DEFAULT_API_KEY = "sk-emulator-0000000000000000"
NO_SOURCE_ANSWER = "I could not find the answer in the provided sources."
# How many slots of the vector each hashed feature touches: more than one keeps collisions from deciding similarity.
SLOTS_PER_FEATURE = 4
BIGRAM_WEIGHT = 0.5
STOPWORD_WEIGHT = 0.2
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with".split()
)

INVALID_INPUT_MESSAGE = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)
INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON."
)
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API "
    "from your browser and are prompted for a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
FAULT_MESSAGES = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


class ErrorAnswer(Exception):
    """An error answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Fault:
    """One injected fault: an error status (with Retry-After when retry_after_seconds is set), or, for a streamed chat
    completion, a connection dropped after `drop_after_tokens` content chunks. endpoint None matches any endpoint."""

    status: int | None = 500
    endpoint: str | None = None
    retry_after_seconds: float | None = None
    drop_after_tokens: int | None = None

    def matches(self, endpoint: str, streaming: bool) -> bool:
        if self.endpoint is not None and self.endpoint != endpoint:
            return False
        # A drop only makes sense for a stream; other requests pass it by.
        return self.drop_after_tokens is None or streaming

    def error(self) -> ErrorAnswer:
        message, error_type, code = FAULT_MESSAGES.get(
            self.status, (f"Emulated failure with status {self.status}.", "server_error", None)
        )
        headers = {}
        if self.retry_after_seconds is not None:
            # Retry-After takes whole seconds; the openai client prefers the finer retry-after-ms, as OpenAI sends.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
            headers["retry-after-ms"] = str(int(self.retry_after_seconds * 1000))
        return ErrorAnswer(self.status, message, type=error_type, code=code, headers=headers)


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: str
    status: int
    model: str | None = None
    input_count: int = 0
    stream: bool = False
    dropped: bool = False
    messages: list = field(default_factory=list, compare=False)  # a chat completion's messages, as sent


# --- embeddings ------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _word(word: str) -> str:
    # Folding a plural or third-person "s" lets "lasts" meet "last" and "pages" meet "page", as real embeddings do.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _text_features(text: str) -> list[tuple[str, float]]:
    raw_words = _WORD.findall(text.lower())
    words = [_word(word) for word in raw_words]
    features = [(word, STOPWORD_WEIGHT if raw in STOPWORDS else 1.0) for raw, word in zip(raw_words, words)]
    features += [(f"{first} {second}", BIGRAM_WEIGHT) for first, second in zip(words, words[1:])]
    return features


def _token_features(tokens: list[int]) -> list[tuple[str, float]]:
    # Token ids cannot be decoded without the tokenizer's data, so the ids themselves are the words.
    words = [f"#{token}" for token in tokens]
    return [(word, 1.0) for word in words] + [(f"{a} {b}", BIGRAM_WEIGHT) for a, b in zip(words, words[1:])]


@lru_cache(maxsize=1 << 18)
def _feature_slots(feature: str, dimensions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8 * SLOTS_PER_FEATURE, key=seed.to_bytes(8, "big"))
    raw = np.frombuffer(digest.digest(), dtype="<u4")
    indices = (raw[:SLOTS_PER_FEATURE] % dimensions).astype(np.int64)
    signs = np.where(raw[SLOTS_PER_FEATURE:] & 1, 1.0, -1.0)
    return indices, signs


def embedding_vectors(inputs: list[str | list[int]], dimensions: int, *, seed: int = 0) -> np.ndarray:
    """The emulator's deterministic, unit-length embeddings (float32, one row per input) of texts or token arrays."""
    rows, slot_indices, slot_signs, weights = [], [], [], []
    for row, item in enumerate(inputs):
        if isinstance(item, str):
            features = _text_features(item) or [(f"<text>{item}", 1.0)]
        else:
            features = _token_features(item)
        for feature, weight in features:
            indices, signs = _feature_slots(feature, dimensions, seed)
            slot_indices.append(indices)
            slot_signs.append(signs)
            weights.append(weight)
        rows.append(np.full(len(features) * SLOTS_PER_FEATURE, row * dimensions, dtype=np.int64))
    # One bincount over the flattened matrix: a Python loop per feature would dominate large batches.
    flat_indices = np.concatenate(rows) + np.concatenate(slot_indices)
    values = np.concatenate(slot_signs) * np.repeat(np.asarray(weights), SLOTS_PER_FEATURE)
    matrix = np.bincount(flat_indices, weights=values, minlength=len(inputs) * dimensions)
    matrix = matrix.reshape(len(inputs), dimensions)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # Features that cancel out exactly are next to impossible; a fixed unit vector keeps the answer well formed.
    matrix[norms[:, 0] == 0, 0] = 1.0
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32)


def embedding_vector(text_or_tokens: str | list[int], dimensions: int, *, seed: int = 0) -> np.ndarray:
    """The emulator's embedding of one text or token array (what /v1/embeddings answers for it)."""
    return embedding_vectors([text_or_tokens], dimensions, seed=seed)[0]


def approximate_token_count(text: str) -> int:
    """Roughly what a BPE tokenizer would count: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def _embedding_inputs(raw: object) -> list[str | list[int]]:
    """The request's inputs as texts and token arrays, validated as OpenAI does."""

    def is_token_array(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(type(item) is int and item >= 0 for item in value)

    if isinstance(raw, str):
        inputs: list = [raw]
    elif is_token_array(raw):
        inputs = [raw]
    elif (
        isinstance(raw, list)
        and raw
        and (all(isinstance(item, str) for item in raw) or all(is_token_array(item) for item in raw))
    ):
        inputs = list(raw)
    else:
        raise ErrorAnswer(400, INVALID_INPUT_MESSAGE)
    if len(inputs) > MAX_EMBEDDING_INPUTS or any(item == "" for item in inputs):
        raise ErrorAnswer(400, INVALID_INPUT_MESSAGE)
    return inputs


# --- chat ------------------------------------------------------------------------------------------------------------

_SOURCE_AT_LINE_START = re.compile(r"^[ \t]*\[(\d+)\][ \t:.-]*", re.MULTILINE)
_SOURCE_ANYWHERE = re.compile(r"\[(\d+)\][ \t:.-]*")
_NEXT_SOURCE = re.compile(r"^[ \t]*\[\d+\]", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
MAX_QUOTED_WORDS = 30


def message_text(message: dict) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _asks_for_standalone_question(messages: list[dict]) -> bool:
    system = [message_text(m) for m in messages if m.get("role") in ("system", "developer")]
    users = [m for m in messages if m.get("role") == "user"]
    return bool(users) and any("standalone question" in text for text in system)


def grounded_answer(messages: list[dict]) -> str:
    """Quotes the first numbered source ("[n] ...") in the system messages and the last user message."""
    user_messages = [message for message in messages if message.get("role") == "user"]
    prompt_parts = [message_text(message) for message in messages if message.get("role") in ("system", "developer")]
    if user_messages:
        prompt_parts.append(message_text(user_messages[-1]))
    prompt = "\n".join(prompt_parts)
    # A marker that starts a line is a source; one inside a sentence is more likely an instruction ("cite as [1]").
    match = _SOURCE_AT_LINE_START.search(prompt) or _SOURCE_ANYWHERE.search(prompt)
    if match is None:
        return NO_SOURCE_ANSWER
    rest = prompt[match.end() :]
    next_source = _NEXT_SOURCE.search(rest)
    source_text = " ".join((rest[: next_source.start()] if next_source else rest).split())
    sentence = _SENTENCE_END.split(source_text, maxsplit=1)[0]
    words = sentence.split()[:MAX_QUOTED_WORDS]
    if not words:
        return NO_SOURCE_ANSWER
    quote = " ".join(words).rstrip(".!?;:,")
    if len(quote) > 1 and quote[0].isupper() and quote[1].islower():
        quote = quote[0].lower() + quote[1:]
    return f"According to [{match.group(1)}], {quote}."


def split_into_tokens(text: str) -> list[str]:
    """Small pieces the way a tokenizer streams them (" According", " to", " [", "1", "],"); they join to `text`."""
    return _TOKEN.findall(text)


# --- the server ------------------------------------------------------------------------------------------------------


class OpenAIEmulator(ServedEmulator):
    """The OpenAI API on a local port.

    api_key: the key every request must bear; None accepts any non-empty key.
    answer: the chat answer, a string or a function of the request's messages; None for `grounded_answer`.
    seed: seeds the embedding hashes and the fault_rate draws, so runs repeat.
    """

    thread_name = "openai-emulator"

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        answer: str | Callable[[list[dict]], str] | None = None,
        rewrite: str | Callable[[list[dict]], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        embedding_models: dict[str, int] | None = None,
        chat_models: tuple[str, ...] | list[str] = CHAT_MODELS,
    ) -> None:
        self.api_key = api_key
        self.answer = answer
        self.rewrite = rewrite
        self.seed = seed
        self.embedding_models = dict(embedding_models or EMBEDDING_MODELS)
        self.chat_models = tuple(chat_models)
        self.latency_seconds = 0.0
        self.token_delay_seconds = 0.0
        self.fault_rate = 0.0
        self.fault_status = 500
        self.fault_retry_after_seconds: float | None = None
        self.drop_streams_after_tokens: int | None = None
        self.faults: deque[Fault] = deque()
        self.request_counts: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self.inputs_embedded = 0
        self.streams_in_flight = 0
        self.peak_streams_in_flight = 0
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def request_handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def bind_address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def base_url(self) -> str:
        """What the openai client takes as base_url (OPENAI_BASE_URL): ends in /v1."""
        return self.origin + "/v1"

    # --- switches ----------------------------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 429,
        *,
        times: int = 1,
        endpoint: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        """Answer the next `times` requests (to `endpoint`, or any) with `status`."""
        self._check_endpoint(endpoint)
        with self._lock:
            self.faults.extend(
                Fault(status=status, endpoint=endpoint, retry_after_seconds=retry_after_seconds) for _ in range(times)
            )

    def drop_stream_next(self, after_tokens: int, *, times: int = 1) -> None:
        """Drop the connection of the next `times` streamed chat completions after `after_tokens` content chunks."""
        with self._lock:
            self.faults.extend(
                Fault(status=None, endpoint=CHAT_COMPLETIONS, drop_after_tokens=after_tokens) for _ in range(times)
            )

    def reset(self) -> None:
        """Healthy and fast again, with no queued faults and zeroed counters (key, answer and models are kept)."""
        with self._lock:
            self.latency_seconds = 0.0
            self.token_delay_seconds = 0.0
            self.fault_rate = 0.0
            self.fault_status = 500
            self.fault_retry_after_seconds = None
            self.drop_streams_after_tokens = None
            self.faults.clear()
            self.request_counts.clear()
            self.requests.clear()
            self.inputs_embedded = 0
            self.peak_streams_in_flight = self.streams_in_flight
            self._random = random.Random(self.seed)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        self._check_endpoint(endpoint)
        with self._lock:
            return [request for request in self.requests if request.endpoint == endpoint]

    @staticmethod
    def _check_endpoint(endpoint: str | None) -> None:
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")

    # --- protocol ----------------------------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> None:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ErrorAnswer(401, MISSING_KEY_MESSAGE)
        if self.api_key is not None and not secrets.compare_digest(key.encode(), self.api_key.encode()):
            shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else key
            raise ErrorAnswer(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def take_fault(self, endpoint: str, streaming: bool) -> Fault | None:
        """The queued fault for this request, else one drawn at `fault_rate`, else None."""
        with self._lock:
            for fault in self.faults:
                if fault.matches(endpoint, streaming):
                    self.faults.remove(fault)
                    return fault
            if self.fault_rate and self._random.random() < self.fault_rate:
                return Fault(status=self.fault_status, retry_after_seconds=self.fault_retry_after_seconds)
        return None

    def models(self) -> dict:
        created = 1_700_000_000
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": created, "owned_by": "system"}
                for model in (*self.chat_models, *self.embedding_models)
            ],
        }

    def embeddings(self, body: dict) -> tuple[dict, int]:
        """Returns the response and the number of inputs."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ErrorAnswer(400, "you must provide a model parameter", param="model")
        if model not in self.embedding_models:
            raise _model_not_found(model)
        if "input" not in body:
            raise ErrorAnswer(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        inputs = _embedding_inputs(body["input"])
        dimensions = self.embedding_models[model]
        requested_dimensions = body.get("dimensions")
        if requested_dimensions is not None:
            if model not in SHORTENABLE_EMBEDDING_MODELS:
                raise ErrorAnswer(400, "This model does not support specifying dimensions.")
            if type(requested_dimensions) is not int or not 1 <= requested_dimensions <= dimensions:
                raise ErrorAnswer(
                    400,
                    "'$.dimensions' is invalid. Please check the API reference: "
                    "https://platform.openai.com/docs/api-reference.",
                )
            dimensions = requested_dimensions
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            raise ErrorAnswer(
                400,
                f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )

        token_counts = [approximate_token_count(item) if isinstance(item, str) else len(item) for item in inputs]
        for token_count in token_counts:
            if token_count > MAX_EMBEDDING_INPUT_TOKENS:
                raise ErrorAnswer(
                    400,
                    f"This model's maximum context length is {MAX_EMBEDDING_INPUT_TOKENS} tokens, however you "
                    f"requested {token_count} tokens in your prompt. Please reduce your prompt.",
                )
        data = []
        for index, vector in enumerate(embedding_vectors(inputs, dimensions, seed=self.seed)):
            if encoding_format == "base64":
                embedding: object = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt_tokens = sum(token_counts)
        response = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return response, len(inputs)

    def chat_answer(self, body: dict) -> tuple[list[str], str, int]:
        """Validates a chat completion request; returns (answer tokens, finish_reason, prompt tokens)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ErrorAnswer(400, "you must provide a model parameter", param="model")
        if model not in self.chat_models:
            raise _model_not_found(model)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ErrorAnswer(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if not all(isinstance(message, dict) and "role" in message for message in messages):
            raise ErrorAnswer(400, "Invalid 'messages': every message needs a 'role'.", param="messages")
        if _asks_for_standalone_question(messages):
            text = self.rewrite(messages) if callable(self.rewrite) else self.rewrite
            if text is None:
                text = message_text([message for message in messages if message.get("role") == "user"][-1])
        elif callable(self.answer):
            text = self.answer(messages)
        elif self.answer is not None:
            text = self.answer
        else:
            text = grounded_answer(messages)
        tokens = split_into_tokens(text)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        finish_reason = "stop"
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish_reason = tokens[:limit], "length"
        prompt_tokens = sum(approximate_token_count(message_text(message)) + 3 for message in messages) + 3
        return tokens, finish_reason, prompt_tokens

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _stream_started(self) -> None:
        with self._lock:
            self.streams_in_flight += 1
            self.peak_streams_in_flight = max(self.peak_streams_in_flight, self.streams_in_flight)

    def _stream_ended(self) -> None:
        with self._lock:
            self.streams_in_flight -= 1


def _model_not_found(model: str) -> ErrorAnswer:
    return ErrorAnswer(
        404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class _DroppedStream(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    emulator: OpenAIEmulator
    protocol_version = "HTTP/1.1"
    server_version = "OpenAIEmulator/1.0"

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            # A client closing an idle keep-alive connection is routine, not an error worth a traceback.
            pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        emulator = self.emulator
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        path = self.path.partition("?")[0].rstrip("/")
        endpoint = ROUTES.get((self.command, path))
        if endpoint is None:
            return self._send_error(ErrorAnswer(404, f"Invalid URL ({self.command} {self.path})"))
        with emulator._lock:
            emulator.request_counts[endpoint] += 1
        body = _json_object(raw_body) if self.command == "POST" else {}
        # Counters are updated before the answer is sent: a test reads them as soon as its request returns.
        try:
            if emulator.latency_seconds:
                time.sleep(emulator.latency_seconds)
            emulator.authenticate(self.headers.get("Authorization"))
            if body is None:
                raise ErrorAnswer(400, INVALID_JSON_MESSAGE)
            streaming = endpoint == CHAT_COMPLETIONS and body.get("stream") is True
            fault = emulator.take_fault(endpoint, streaming)
            if fault is not None and fault.drop_after_tokens is None:
                raise fault.error()
            if endpoint == MODELS:
                emulator._record(RecordedRequest(endpoint, 200))
                self._send_json(200, emulator.models())
            elif endpoint == EMBEDDINGS:
                response, input_count = emulator.embeddings(body)
                with emulator._lock:
                    emulator.inputs_embedded += input_count
                emulator._record(RecordedRequest(endpoint, 200, model=body["model"], input_count=input_count))
                self._send_json(200, response)
            elif streaming:
                tokens, finish_reason, prompt_tokens = emulator.chat_answer(body)
                drop_after = fault.drop_after_tokens if fault is not None else emulator.drop_streams_after_tokens
                self._stream_chat(body, tokens, finish_reason, prompt_tokens, drop_after)
            else:
                tokens, finish_reason, prompt_tokens = emulator.chat_answer(body)
                emulator._record(RecordedRequest(endpoint, 200, model=body["model"], messages=body["messages"]))
                self._send_json(200, _completion(body["model"], tokens, finish_reason, prompt_tokens))
        except ErrorAnswer as error:
            body = body or {}
            model = body.get("model") if isinstance(body.get("model"), str) else None
            emulator._record(RecordedRequest(endpoint, error.status, model=model, stream=body.get("stream") is True))
            self._send_error(error)

    def _stream_chat(
        self, body: dict, tokens: list[str], finish_reason: str, prompt_tokens: int, drop_after: int | None
    ) -> None:
        emulator = self.emulator
        model = body["model"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> dict:
            event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_emulator",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None
            return event

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", "req_" + secrets.token_hex(16))
        self.end_headers()
        emulator._stream_started()
        dropped = drop_after is not None
        finished = False

        def finish() -> None:
            # Before the last bytes leave, so a client that has read the whole stream finds the request recorded.
            nonlocal finished
            if not finished:
                finished = True
                emulator._stream_ended()
                emulator._record(
                    RecordedRequest(
                        CHAT_COMPLETIONS, 200, model=model, stream=True, dropped=dropped, messages=body["messages"]
                    )
                )

        try:
            try:
                self._send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
                for sent, token in enumerate(tokens):
                    if dropped and sent >= drop_after:
                        break
                    if sent and emulator.token_delay_seconds:
                        time.sleep(emulator.token_delay_seconds)
                    self._send_event(chunk({"content": token}))
                if not dropped:
                    self._send_event(chunk({}, finish_reason))
                    if include_usage:
                        usage_event = chunk({})
                        usage_event["choices"] = []
                        usage_event["usage"] = _usage(prompt_tokens, len(tokens))
                        self._send_event(usage_event)
                    finish()
                    self._send_chunk(b"data: [DONE]\n\n")
            finally:
                finish()
            if dropped:
                # No terminating chunk: the client sees the connection close in the middle of the body.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (stopped reading the stream); nothing left to answer.
            self.close_connection = True

    def _send_event(self, event: dict) -> None:
        self._send_chunk(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")

    def _send_error(self, error: ErrorAnswer) -> None:
        self._send_json(error.status, error.payload(), error.headers)

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", "req_" + secrets.token_hex(16))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # Quiet under pytest; the counters say what happened.
        pass


def _json_object(raw_body: bytes) -> dict | None:
    """The request's JSON object, or None when the body is not one."""
    try:
        body = json.loads(raw_body or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _completion(model: str, tokens: list[str], finish_reason: str, prompt_tokens: int) -> dict:
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_emulator",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens), "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": _usage(prompt_tokens, len(tokens)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve an emulator of the OpenAI API (embeddings, chat, models).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the key requests must bear")
    parser.add_argument("--any-key", action="store_true", help="accept any non-empty key")
    parser.add_argument("--answer", help="always answer chat completions with this text")
    parser.add_argument("--seed", type=int, default=0, help="seeds embeddings and the fault rate")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every response / first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests answered with --fault-status")
    parser.add_argument("--fault-status", type=int, default=500)
    parser.add_argument("--fault-retry-after", type=float, help="Retry-After seconds sent with --fault-rate faults")
    parser.add_argument(
        "--fail-next",
        type=int,
        action="append",
        default=[],
        metavar="STATUS",
        help="answer the next request with STATUS (repeatable, in order)",
    )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds for --fail-next 429")
    parser.add_argument(
        "--drop-after", type=int, metavar="N", help="drop every streamed answer's connection after N tokens"
    )
    arguments = parser.parse_args(argv)

    emulator = OpenAIEmulator(
        api_key=None if arguments.any_key else arguments.api_key,
        answer=arguments.answer,
        host=arguments.host,
        port=arguments.port,
        seed=arguments.seed,
    )
    emulator.latency_seconds = arguments.latency
    emulator.token_delay_seconds = arguments.token_delay
    emulator.fault_rate = arguments.fault_rate
    emulator.fault_status = arguments.fault_status
    emulator.fault_retry_after_seconds = arguments.fault_retry_after
    for status in arguments.fail_next:
        emulator.fail_next(status, retry_after_seconds=arguments.retry_after if status == 429 else None)
    emulator.drop_streams_after_tokens = arguments.drop_after
    emulator.start()
    print(f"OpenAI emulator on {emulator.base_url}; run the app with:")
    print(f"  OPENAI_BASE_URL={emulator.base_url}")
    print(f"  OPENAI_API_KEY={arguments.api_key if not arguments.any_key else 'sk-anything'}", flush=True)
    emulator.serve_until_stopped()


if __name__ == "__main__":
    main()
