"""CODESERVE_MODEL as a local directory or a Hugging Face repo id: described from its files, planned, refused
with the reason (offline, unknown quantization, no config.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server import model_source
from server.planner.catalog import Catalog
from server.planner.choose import choose
from server.planner.hardware import simulated
from server.planner.plan import NoFit
from server.prepare import prepare_bundled
from server.settings import Settings
from tests.conftest import FIXED_CPU, make_settings

QWEN_FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


@pytest.fixture(scope="module")
def bundled_dir(catalog: Catalog) -> Path:
    return prepare_bundled(make_settings().cache_dir, catalog.bundled())


def model_dir(root: Path, bundled: Path, config: dict, fim: tuple[str, ...] = (), chat: bool = False) -> Path:
    """A model directory as save_pretrained writes it (config and tokenizer; no weights needed to plan)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(bundled / "tokenizer.json", root / "tokenizer.json")
    tokenizer_config = json.loads((bundled / "tokenizer_config.json").read_text())
    tokenizer_config["added_tokens_decoder"] = {str(100000 + i): {"content": t, "special": True}
                                                for i, t in enumerate(fim)}
    (root / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if chat:
        shutil.copy(bundled / "chat_template.jinja", root / "chat_template.jinja")
    return root


def qwen2_config(**extra: object) -> dict:
    import transformers

    config = transformers.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                      num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                      tie_word_embeddings=True, max_position_embeddings=32768)
    return {**config.to_dict(), "architectures": ["Qwen2ForCausalLM"], **extra}


def _resolve(catalog: Catalog, **settings: object) -> model_source.Source:
    return model_source.resolve(make_settings(**settings), catalog)


def _planning(catalog: Catalog, **settings: object) -> tuple[model_source.Source, Settings]:
    """The source and the settings the planner takes: the user's, with the source's pins over them."""
    given = make_settings(**settings)
    source = model_source.resolve(given, catalog)
    return source, source.pins.applied(given)


def test_a_local_directory_is_described_from_its_files_and_planned(catalog: Catalog, bundled_dir: Path,
                                                                   tmp_path: Path) -> None:
    path = model_dir(tmp_path / "My-FineTune", bundled_dir, qwen2_config(), fim=QWEN_FIM)
    source, settings = _planning(catalog, model=str(path))
    entry = source.catalog.get(str(path.resolve()))
    assert entry is not None and entry.id == "my-finetune" and source.pins.model == str(path.resolve())
    assert (entry.fim, entry.role, entry.vllm.architecture) == ("qwen", "base", "Qwen2ForCausalLM")
    twin = catalog.get("qwen2.5-coder-0.5b")
    assert twin is not None and entry.params == pytest.approx(twin.params, rel=0.01)  # the same shapes
    facts = "\n".join(source.facts)
    assert "Qwen2ForCausalLM from config.json" in facts and "FIM           qwen" in facts
    plan = choose(simulated("1xL4", FIXED_CPU), source.catalog, settings)
    assert plan.chosen.model.id == "my-finetune" and plan.chosen.launch.model == str(path.resolve())
    assert plan.chosen.memory.weights == choose(simulated("1xL4", FIXED_CPU), catalog, make_settings(
        model="qwen2.5-coder-0.5b", precision=plan.chosen.precision)).chosen.memory.weights


def test_an_architecture_the_installed_vllm_cannot_load_is_planned_on_the_transformers_engine(
        catalog: Catalog, bundled_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="the installed vLLM's registry decides")
    import transformers

    config = transformers.GPTNeoConfig(num_layers=2, hidden_size=128, num_heads=2, attention_types=[[["global",
                                       "local"], 1]], vocab_size=49152)
    path = model_dir(tmp_path / "neo", bundled_dir, {**config.to_dict(), "architectures": ["GPTNeoForCausalLM"]})
    source, settings = _planning(catalog, model=str(path))
    entry = source.catalog.get(str(path.resolve()))
    assert entry is not None and entry.vllm.status == "unsupported" and "model registry" in (entry.vllm.reason or "")
    plan = choose(simulated("none", FIXED_CPU), source.catalog, settings)
    assert plan.chosen.launch.engine == "transformers"
    assert any("GPTNeoForCausalLM" in note and "Transformers engine" in note for note in plan.notes)


def test_a_chat_template_makes_an_instruct_model(catalog: Catalog, bundled_dir: Path, tmp_path: Path) -> None:
    path = model_dir(tmp_path / "chatty", bundled_dir, qwen2_config(), chat=True)
    entry = _resolve(catalog, model=str(path)).catalog.get(str(path.resolve()))
    assert entry is not None and (entry.role, entry.fim) == ("instruct", None)


def test_a_4_bit_directory_is_served_as_it_is(catalog: Catalog, bundled_dir: Path, tmp_path: Path) -> None:
    quantized = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "int", "group_size": 64, "strategy": "group"}}}}
    path = model_dir(tmp_path / "q4", bundled_dir, qwen2_config(quantization_config=quantized))
    source, settings = _planning(catalog, model=str(path))
    assert source.pins.precision == "awq" and settings.precision == "awq"
    plan = choose(simulated("1xT4", FIXED_CPU), source.catalog, settings)
    assert (plan.chosen.precision, plan.chosen.awq_group_size, plan.chosen.needs_quantization) == ("awq", 64, False)
    assert plan.chosen.launch.model == str(path.resolve())  # its own weights, never re-quantized
    with pytest.raises(NoFit, match="holds awq weights; CODESERVE_PRECISION=bf16"):
        _resolve(catalog, model=str(path), precision="bf16")


def test_a_directory_named_like_a_catalog_model_is_kept_apart(catalog: Catalog, bundled_dir: Path,
                                                             tmp_path: Path) -> None:
    path = model_dir(tmp_path / "qwen2.5-coder-0.5b", bundled_dir, qwen2_config())
    entry = _resolve(catalog, model=str(path)).catalog.get(str(path.resolve()))
    assert entry is not None and entry.id == "qwen2.5-coder-0.5b-local"


def test_the_chat_model_can_be_a_directory_too(catalog: Catalog, bundled_dir: Path, tmp_path: Path) -> None:
    path = model_dir(tmp_path / "team-chat", bundled_dir, qwen2_config(), chat=True)
    source = _resolve(catalog, role="completion,chat", chat_model=str(path))
    assert source.pins == model_source.Pins(chat_model=str(path.resolve()))  # CODESERVE_MODEL stays as given


def test_offline_a_repo_id_fails_at_once_naming_hf_hub_offline(catalog: Catalog,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NoFit) as raised:
        _resolve(catalog, model="someone/their-coder-7b")
    message = str(raised.value)
    assert "HF_HUB_OFFLINE" in message and "CODESERVE_MODEL=DIR" in message


def test_an_unreachable_hub_says_what_to_do(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args: object, **kwargs: object) -> str:
        raise OSError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(NoFit, match=r"fetching its config from the Hugging Face Hub failed.*HF_HUB_OFFLINE=1"):
        _resolve(catalog, model="someone/their-coder-7b")


@pytest.mark.parametrize(("setting", "message"), [
    ("not a model", "neither a catalog id"),
    ("./missing-dir/", "neither a catalog id"),
])
def test_what_is_no_model_source_is_named(catalog: Catalog, setting: str, message: str) -> None:
    with pytest.raises(NoFit, match=message):
        _resolve(catalog, model=setting)


def test_a_directory_without_config_json_names_the_file(catalog: Catalog, tmp_path: Path) -> None:
    (tmp_path / "weights-only").mkdir()
    with pytest.raises(NoFit, match=r"config\.json is missing"):
        _resolve(catalog, model=str(tmp_path / "weights-only"))


def test_a_config_json_that_is_no_object_is_named_so(catalog: Catalog, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(NoFit, match=r"config\.json is not a JSON object"):
        _resolve(catalog, model=str(tmp_path))


def test_catalog_ids_are_untouched(catalog: Catalog) -> None:
    settings = make_settings(model="qwen2.5-coder-7b")
    source = model_source.resolve(settings, catalog)
    assert source.catalog is catalog and source.facts == () and source.pins == model_source.Pins()
    assert source.pins.applied(settings) is settings  # nothing derived: the planner gets the user's own settings


def test_lora_adapters_are_read_from_their_config(catalog: Catalog, tmp_path: Path) -> None:
    adapter = tmp_path / "style"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "v_proj"],
                                                             "base_model_name_or_path": "HuggingFaceTB/SmolLM2"}))
    source = _resolve(catalog, lora_adapters=f"team-style={adapter}")
    (found,) = source.adapters
    assert (found.name, found.path, found.rank, found.targets) == ("team-style", str(adapter.resolve()), 8,
                                                                   ("q_proj", "v_proj"))
    assert any("LoRA          team-style: rank 8" in fact for fact in source.facts)
    with pytest.raises(NoFit, match=r"no adapter_config\.json"):
        _resolve(catalog, lora_adapters=f"broken={tmp_path}")
    with pytest.raises(NoFit, match="twice"):
        _resolve(catalog, lora_adapters=f"a={adapter},a={adapter}")


@pytest.mark.parametrize("given", ["no-equals", "=path", "name="])
def test_lora_setting_is_name_equals_path(given: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not name=path"):
        make_settings(lora_adapters=given)
