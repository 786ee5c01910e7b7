"""Group-size choice, calibration data and cache keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from server.planner.catalog import Catalog
from server.quantize.recipe import Calibration, QuantizeError, QuantSpec, choose_group_size, fingerprint


@pytest.mark.parametrize(("model", "tp", "group"), [
    ("qwen2.5-coder-7b", 1, 128),
    ("qwen2.5-coder-7b", 4, 128),  # 18944 / 4 = 4736 = 37 x 128
    ("qwen2.5-coder-0.5b", 1, 128),  # hidden 896 = 7 x 128
    ("qwen2.5-coder-0.5b", 2, 64),  # down_proj's 4864 / 2 = 2432 = 38 x 64
    ("smollm2-135m-instruct", 1, 64),  # hidden 576 = 4.5 x 128
    ("codestral-22b", 8, 128),
], ids=lambda v: str(v))
def test_largest_group_that_divides(catalog: Catalog, model: str, tp: int, group: int) -> None:
    assert choose_group_size(catalog.get(model).architecture, tp) == group  # type: ignore[union-attr]


def test_requested_group_must_divide(catalog: Catalog) -> None:
    arch = catalog.get("smollm2-135m-instruct").architecture  # type: ignore[union-attr]
    assert choose_group_size(arch, 1, 32) == 32
    with pytest.raises(QuantizeError, match="group size 128 does not divide input features \\[576"):
        choose_group_size(arch, 1, 128)


def test_refuses_when_nothing_divides(catalog: Catalog) -> None:
    arch = catalog.get("smollm2-135m-instruct").architecture.model_copy(  # type: ignore[union-attr]
        update={"hidden_size": 580, "attention_heads": 10, "kv_heads": 10})
    with pytest.raises(QuantizeError, match="no AWQ group size"):
        choose_group_size(arch, 1)


def test_calibration_is_code_and_seeded() -> None:
    calibration = Calibration(samples=6, max_seq_len=64, seed=3)
    texts = calibration.texts()
    assert len(texts) == 6 and texts == Calibration(samples=6, max_seq_len=64, seed=3).texts()
    assert texts != Calibration(samples=6, max_seq_len=64, seed=4).texts()
    assert all(len(t) <= 64 * 4 for t in texts)
    assert sum(("def " in t or "import " in t or "return" in t or "self" in t) for t in texts) >= 4


SPEC = QuantSpec("m", "abc", group_size=64, calibration=Calibration(samples=4, max_seq_len=128))


@pytest.mark.parametrize("change", [
    {"model_id": "other"}, {"source_fingerprint": "def"}, {"bits": 8}, {"group_size": 128},
    {"calibration": Calibration(samples=5, max_seq_len=128)}, {"calibration": Calibration(4, 128, seed=1)},
], ids=lambda c: next(iter(c)))
def test_every_input_changes_the_key(change: dict) -> None:
    assert replace(SPEC, **change).key != SPEC.key


def test_key_is_stable_and_named() -> None:
    assert QuantSpec("m", "abc", group_size=64, calibration=Calibration(4, 128)).key == SPEC.key
    assert SPEC.dirname.startswith("m-awq-w4g64-")


def test_fingerprint_follows_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert fingerprint(tmp_path) != first
