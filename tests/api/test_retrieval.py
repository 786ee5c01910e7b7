"""/v1/embeddings and /v1/rerank over tiny random-weight BERTs on the Transformers retrieval engine, served on a real
socket beside a generation engine: vectors and scores checked against the same weights run directly through
Transformers, the openai SDK as a client, batch limits and bad input answered with 4xx naming the field."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from server.api.app import build_app
from server.api.runtime import Runtime
from server.engine.hf_pooling import TransformersPooler
from server.generation.core import GenerationCore
from server.generation.served import ServedModel
from server.model_source import describe
from server.planner.catalog import Catalog
from server.prepare import prepare_bundled
from tests.api.conftest import ready_runtime
from tests.conftest import make_settings
from tests.fake_engine import FakeEngine
from tests.serverutil import openai_error, running
from tests.tiny_models import build_retrieval, retrieval_launch

CHUNKS = ["def add(a, b):\n    return a + b", "class Stack:\n    def push(self, x): ...", "import os",
          "SELECT name FROM users WHERE id = 1;"]
MAX_INPUTS = 16


@pytest.fixture(scope="session")
def retrieval_dirs(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> dict[str, Path]:
    tokenizer = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    root = tmp_path_factory.mktemp("tiny-retrieval")
    return {kind: build_retrieval(kind, root / kind, tokenizer) for kind in ("embedding", "reranker")}


@dataclass
class Live:
    url: str
    runtime: Runtime
    dirs: dict[str, Path]

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60)


@pytest.fixture(scope="module")
def live(retrieval_dirs: dict[str, Path], catalog: Catalog) -> Iterator[Live]:
    """The generation role on the fake engine, embedding and rerank on the Transformers retrieval engine: the
    inputs' limit is 64 tokens (the plan's CODESERVE_MAX_INPUT_TOKENS) and at most 16 inputs a request."""
    runtime, settings = ready_runtime(catalog, FakeEngine(), max_embedding_inputs=MAX_INPUTS)
    for role, kind, pooling in (("embedding", "embedding", "embed"), ("rerank", "reranker", "score")):
        entry = describe(retrieval_dirs[kind], str(retrieval_dirs[kind]), kind).entry
        assert entry.retrieval is not None
        launch = retrieval_launch(retrieval_dirs[kind], pooling, entry.retrieval.pooling, 64)
        engine = TransformersPooler.start(launch)
        runtime.serve(GenerationCore(engine, ServedModel(entry.id, entry, engine.max_model_len)), (role,))
    with running(build_app(runtime, settings)) as url:
        yield Live(url, runtime, retrieval_dirs)
    for core in runtime.cores[1:]:
        asyncio.run(core.engine.shutdown())


def _direct_embeddings(path: Path, texts: list[str]) -> list[list[float]]:
    """What sentence-transformers computes from these weights: mean over the attention mask, L2-normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    vectors = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding in the reference
            encoded = tokenizer(text, return_tensors="pt")
            states = model(**encoded).last_hidden_state[0]
            vectors.append(torch.nn.functional.normalize(states.mean(0), dim=-1).tolist())
    return vectors


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))


def test_vectors_match_transformers_run_directly(live: Live) -> None:
    response = live.post("/v1/embeddings", {"input": CHUNKS, "model": "embedding"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["index"] for d in body["data"]] == list(range(len(CHUNKS))) and body["object"] == "list"
    direct = _direct_embeddings(live.dirs["embedding"], CHUNKS)
    for served, expected in zip(body["data"], direct, strict=True):
        assert len(served["embedding"]) == 128
        assert _cosine(served["embedding"], expected) > 0.999  # batched with padding, the same vectors
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(CHUNKS)


def test_the_openai_sdk_as_a_client(live: Live) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused")
    result = client.embeddings.create(model="embedding", input=CHUNKS[:2])  # the SDK asks for base64 and decodes
    floats = live.post("/v1/embeddings", {"input": CHUNKS[:2], "encoding_format": "float"}).json()
    for got, expected in zip(result.data, floats["data"], strict=True):
        assert got.embedding == pytest.approx(expected["embedding"], abs=1e-6)
    assert result.usage.prompt_tokens == floats["usage"]["prompt_tokens"]


def test_one_string_token_ids_and_base64(live: Live) -> None:
    one = live.post("/v1/embeddings", {"input": CHUNKS[0]}).json()["data"][0]["embedding"]
    engine = live.runtime.roles["embedding"].engine
    ids = engine.tokenize(CHUNKS[0])
    by_ids = live.post("/v1/embeddings", {"input": ids}).json()["data"][0]["embedding"]
    lists = live.post("/v1/embeddings", {"input": [ids, ids[:3]]}).json()["data"]
    packed = live.post("/v1/embeddings", {"input": CHUNKS[0], "encoding_format": "base64"}).json()
    decoded = list(struct.unpack("<128f", base64.b64decode(packed["data"][0]["embedding"])))
    assert by_ids == pytest.approx(one) and lists[0]["embedding"] == pytest.approx(one)
    assert decoded == pytest.approx(one, abs=1e-6)


def test_over_the_limit_names_the_input_unless_truncation_is_asked(live: Live) -> None:
    long = "x = 1\n" * 200  # far over the 64-token limit
    refused = live.post("/v1/embeddings", {"input": ["short", long]})
    error = openai_error(refused, 400)
    assert error["param"] == "input[1]" and "64" in error["message"]
    cut = live.post("/v1/embeddings", {"input": ["short", long], "truncate_prompt_tokens": -1})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] <= 64 + 2


@pytest.mark.parametrize(("body", "param"), [
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": 5}, "input"),
    ({"input": [1.5, 2.5]}, "input"),
    ({"input": ["a"] * 100_000}, "input"),
    ({"input": ["a"] * (MAX_INPUTS + 1)}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 64}, "dimensions"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": [10**9]}, "input"),
    ({"input": "a", "instructions": "x"}, "instructions"),
], ids=["empty-list", "empty-string", "an-empty-string", "number", "floats", "100k-inputs", "over-the-setting",
        "encoding", "no-matryoshka", "zero-dimensions", "token-id-out-of-range", "unknown-field"])
def test_bad_input_is_a_400_naming_the_field(live: Live, body: dict[str, Any], param: str) -> None:
    response = live.post("/v1/embeddings", body)
    assert response.status_code == 400, response.text
    assert (openai_error(response, 400)["param"] or "").startswith(param)


def _direct_scores(path: Path, query: str, documents: list[str]) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return [float(torch.sigmoid(model(**tokenizer(query, d, return_tensors="pt")).logits[0, 0]))
                for d in documents]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_orders_as_the_direct_scores(live: Live, path: str) -> None:
    query = "push onto a stack"
    response = live.post(path, {"model": "reranker", "query": query, "documents": CHUNKS})
    assert response.status_code == 200, response.text
    body = response.json()
    direct = _direct_scores(live.dirs["reranker"], query, CHUNKS)
    expected = sorted(range(len(CHUNKS)), key=lambda i: -direct[i])
    assert [r["index"] for r in body["results"]] == expected
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(direct[result["index"]], abs=1e-4)
        assert result["document"]["text"] == CHUNKS[result["index"]]
    assert body["usage"]["total_tokens"] > 0 and body["model"] == "reranker"


def test_rerank_top_n_objects_and_no_documents(live: Live) -> None:
    body = live.post("/v1/rerank", {"query": "q", "documents": [{"text": c} for c in CHUNKS], "top_n": 2,
                                    "return_documents": False}).json()
    assert len(body["results"]) == 2 and all(r.get("document") is None for r in body["results"])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("body", "param"), [
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "", "documents": ["a"]}, "query"),
    ({"query": "q", "documents": ["a"] * (MAX_INPUTS + 1)}, "documents"),
    ({"query": "q", "documents": ["short", "x = 1\n" * 200]}, "documents[1]"),
    ({"query": "q", "documents": "a"}, "documents"),
    ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
], ids=["no-documents", "empty-query", "over-the-setting", "over-the-limit", "not-a-list", "negative-top-n"])
def test_rerank_bad_input_is_a_400_naming_the_field(live: Live, body: dict[str, Any], param: str) -> None:
    response = live.post("/v1/rerank", body)
    assert (openai_error(response, 400)["param"] or "").startswith(param)


def test_models_list_what_retrieval_models_compute(live: Live) -> None:
    models = {m["id"]: m for m in httpx.get(live.url + "/v1/models").json()["data"]}
    assert models["embedding"]["capabilities"]["retrieval"] == "embeddings"
    assert models["embedding"]["capabilities"]["dimensions"] == 128
    assert models["reranker"]["capabilities"]["retrieval"] == "rerank"


def test_a_model_of_the_wrong_kind_is_a_400(live: Live) -> None:
    completion = live.post("/v1/completions", {"model": "embedding", "prompt": "def"})
    assert "embedding model" in openai_error(completion, 400)["message"]
    embeddings = live.post("/v1/embeddings", {"model": "reranker", "input": "def"})
    assert "not an embedding model" in openai_error(embeddings, 400)["message"]
    rerank = live.post("/v1/rerank", {"model": "qwen2.5-coder-7b", "query": "q", "documents": ["a"]})
    assert openai_error(rerank, 400)["param"] == "model"


def test_requests_are_counted_by_endpoint_and_model(live: Live) -> None:
    live.post("/v1/embeddings", {"input": "def f(): pass"})
    live.post("/rerank", {"query": "q", "documents": ["a", "b"]})
    metrics = live.runtime.metrics
    assert metrics is not None
    assert metrics.prompt_tokens.labels("embeddings", "embedding")._value.get() > 0
    assert metrics.prompt_tokens.labels("rerank", "reranker")._value.get() > 0
    assert metrics.requests.labels("embeddings", "200")._value.get() >= 1
    assert metrics.requests.labels("rerank", "200")._value.get() >= 1
