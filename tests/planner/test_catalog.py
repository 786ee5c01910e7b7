"""The catalog loads, covers the families people run, and a broken entry is named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.planner.catalog import Catalog, CatalogError, ModelEntry, load_catalog
from server.settings import DEFAULT_CATALOG_PATH

REQUIRED_FAMILIES = {"qwen2.5-coder", "deepseek-coder", "starcoder2", "starcoder", "codellama", "wizardcoder",
                     "codestral", "codegen", "codet5p", "incoder", "codegeex", "polycoder", "phi", "smollm2",
                     "qwen3-coder", "seed-coder", "gpt-oss", "devstral", "mellum"}


def test_covers_every_family(catalog: Catalog) -> None:
    assert set(catalog.families) >= REQUIRED_FAMILIES


@pytest.mark.parametrize("model_id", [
    "codellama-7b", "codellama-13b", "codellama-34b", "codellama-70b", "starcoder-15b", "starcoder2-3b",
    "starcoder2-7b", "starcoder2-15b", "wizardcoder-15b", "wizardcoder-33b", "deepseek-coder-1.3b",
    "deepseek-coder-6.7b", "deepseek-coder-33b", "deepseek-coder-v2-lite", "deepseek-coder-v2",
    "codet5p-220m", "codegen-350m-mono", "codegen-16b-mono", "incoder-1b", "incoder-6b", "codegeex-13b",
    "codegeex4-9b", "polycoder-2.7b", "phi-1", "qwen2.5-coder-0.5b", "qwen2.5-coder-32b", "codestral-22b",
    "smollm2-135m-instruct", "qwen3-coder-30b-a3b-instruct", "qwen3-coder-480b-a35b-instruct", "seed-coder-8b",
    "gpt-oss-20b", "gpt-oss-120b", "devstral-small-2505", "devstral-small-2507", "mellum-4b-base",
])
def test_required_entries_exist(catalog: Catalog, model_id: str) -> None:
    assert catalog.get(model_id) is not None


def test_superseded_entries_name_a_real_replacement(catalog: Catalog) -> None:
    for entry in catalog.models:
        if entry.superseded_by:
            assert catalog.get(entry.superseded_by) is not None, entry.id


def test_every_entry_kept_out_of_the_automatic_choice_says_why(catalog: Catalog) -> None:
    assert [e.id for e in catalog.models if not (e.auto or e.bundled or e.superseded_by or e.manual_reason)] == []


def test_every_entry_has_a_code_score_or_says_there_is_none(catalog: Catalog) -> None:
    scored = {e.id: e.score for e in catalog.models}
    assert scored["qwen2.5-coder-7b"] == "HumanEval 61.6"
    assert scored["gpt-oss-120b"].startswith("SWE-bench Verified 62.4")
    assert scored["deepseek-coder-v2"] == "no code score published"


# The authors' own figures (model card / paper / README) for the entries added from 2025 on: (id, total, active or None,
# whether their active count includes the input embedding, the relative precision they state it to). Total and active
# computed from the catalog's shapes must agree within 1% or within the rounding of a figure given to two digits.
AUTHORS_FIGURES = [
    ("gpt-oss-20b", 20.91e9, 3.61e9, False, 0.01),  # arXiv 2508.10925 table 1: active excludes the embedding
    ("gpt-oss-120b", 116.83e9, 5.13e9, False, 0.01),
    ("qwen3-coder-30b-a3b-instruct", 30.5e9, 3.3e9, True, 0.02),  # card: "30.5B in total and 3.3B activated"
    ("qwen3-coder-480b-a35b-instruct", 480e9, 35e9, True, 0.02),  # card: "480B ... 35B activated"
    ("devstral-small-2507", 24e9, None, True, 0.02),  # card: "24 billion parameters"
    ("mellum-4b-base", 4.02e9, None, True, 0.01),  # the Hub's safetensors count
]


@pytest.mark.parametrize(("model_id", "total", "active", "with_embedding", "tolerance"), AUTHORS_FIGURES,
                         ids=[row[0] for row in AUTHORS_FIGURES])
def test_new_entries_match_their_authors_counts(catalog: Catalog, model_id: str, total: float, active: float | None,
                                                with_embedding: bool, tolerance: float) -> None:
    from server.planner.memory import active_params, param_counts

    entry = catalog.get(model_id)
    assert entry is not None
    arch = entry.architecture
    assert param_counts(arch).total == pytest.approx(total, rel=tolerance)
    if active is not None:
        counted = active_params(arch) - (0 if with_embedding else arch.vocab_size * arch.hidden_size)
        assert counted == pytest.approx(active, rel=tolerance)


def test_exactly_one_bundled_model(catalog: Catalog) -> None:
    assert [e.id for e in catalog.models if e.bundled] == ["smollm2-135m-instruct"]


def _write_catalog(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    models = [dict(m) for m in raw["models"][:3]]
    for m in models:
        m["architecture"] = dict(m["architecture"])
    mutate(models)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def _drop_params(models: list[dict]) -> None:
    del models[1]["params"]


def _bad_layers(models: list[dict]) -> None:
    models[2]["architecture"]["layers"] = "many"


def _unsupported_without_reason(models: list[dict]) -> None:
    models[0]["vllm"] = {"status": "unsupported", "architecture": "X"}


def _duplicate(models: list[dict]) -> None:
    models[1]["id"] = models[0]["id"]


def _bad_heads(models: list[dict]) -> None:
    models[0]["architecture"]["kv_heads"] = 3


@pytest.mark.parametrize(("mutate", "expected"), [
    (_drop_params, "entry 'qwen2.5-coder-0.5b-instruct', field params: Field required"),
    (_bad_layers, "entry 'qwen2.5-coder-1.5b', field architecture.layers"),
    (_unsupported_without_reason, "entry 'qwen2.5-coder-0.5b', field vllm"),
    (_duplicate, "duplicate id 'qwen2.5-coder-0.5b'"),
    (_bad_heads, "attention_heads 14 is not a multiple of kv_heads 3"),
], ids=["missing-field", "wrong-type", "unsupported-needs-reason", "duplicate-id", "heads-vs-kv"])
def test_broken_entry_names_file_entry_and_field(tmp_path: Path, mutate, expected: str) -> None:
    path = _write_catalog(tmp_path, mutate)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="CODESERVE_CATALOG_PATH"):
        load_catalog(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)


# (inventory, role, families, chosen): the newer families are planned and served once allowed
@pytest.mark.parametrize(("spec", "role", "families", "chosen"), [
    ("1xL4", "completion", "seed-coder", ("seed-coder-8b", "fp8", 1, "ByteDance-Seed/Seed-Coder-8B-Base")),
    ("1xA100-80GB", "chat", "qwen3-coder",
     ("qwen3-coder-30b-a3b-instruct", "bf16", 1, "Qwen/Qwen3-Coder-30B-A3B-Instruct")),
    ("1xL40S", "chat", "qwen3-coder",
     ("qwen3-coder-30b-a3b-instruct", "fp8", 1, "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8")),
    # the authors' MXFP4 checkpoint as it is: one H100 holds the 120b (its card: "fits into a single H100 GPU")
    ("1xH100", "chat", "gpt-oss", ("gpt-oss-120b", "mxfp4", 1, "openai/gpt-oss-120b")),
    # Marlin pads the 120b's experts 9% on Ampere: at 8 x 8192 tokens it misses an A100-80GB, the 20b serves
    ("1xA100-80GB", "chat", "gpt-oss", ("gpt-oss-20b", "mxfp4", 1, "openai/gpt-oss-20b")),
    ("1xL4", "chat", "gpt-oss", ("gpt-oss-20b", "mxfp4", 1, "openai/gpt-oss-20b")),
    ("1xL40S", "chat", "devstral", ("devstral-small-2507", "fp8", 1, "mistralai/Devstral-Small-2507")),
    # full multi-head attention (24 KV heads): 360 KiB of KV per token, so 8 x 8192 tokens need 22.5 GiB
    ("1xL40S", "completion", "mellum", ("mellum-4b-base", "bf16", 1, "JetBrains/Mellum-4b-base")),
])
def test_newer_families_plan_when_allowed(catalog: Catalog, spec: str, role: str, families: str,
                                          chosen: tuple[str, str, int, str]) -> None:
    from server.planner.choose import choose
    from server.planner.hardware import simulated
    from tests.conftest import FIXED_CPU, make_settings

    plan = choose(simulated(spec, FIXED_CPU), catalog, make_settings(role=role, families=families))
    option = plan.chosen
    assert (option.model.id, option.precision, option.tensor_parallel_size, option.launch.model) == chosen


@pytest.mark.parametrize(("model_id", "wanted", "problem"), [
    ("qwen3-embedding-0.6b", 1024, None), ("qwen3-embedding-0.6b", 256, None), ("qwen3-embedding-0.6b", 32, None),
    ("qwen3-embedding-0.6b", 16, "any from 32 to 1024"), ("qwen3-embedding-0.6b", 2048, "any from 32 to 1024"),
])
def test_matryoshka_dimensions(catalog: Catalog, model_id: str, wanted: int, problem: str | None) -> None:
    entry = catalog.get(model_id)
    assert entry is not None and entry.retrieval is not None
    found = entry.retrieval.dimensions_problem(wanted)
    assert found == problem if problem is None else problem in (found or "")


def test_retrieval_entries_carry_what_they_compute(catalog: Catalog) -> None:
    kinds = {e.role for e in catalog.models if e.retrieval is not None}
    assert kinds == {"embedding", "reranker"}
    broken = next(e for e in catalog.models if e.role == "reranker").model_dump()
    broken["retrieval"] = None
    with pytest.raises(ValueError, match="needs `retrieval:`"):
        ModelEntry.model_validate(broken)
