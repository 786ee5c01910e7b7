"""engine/gguf_convert.py: a Q4_1 GGUF's weight matrices rewritten as Q8_0, values and metadata kept, the size the
planner was told, written once and atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.engine import gguf_convert
from server.engine.gguf_file import read


def write_q4_1(path: Path, seed: int = 0) -> Path:
    """A tiny llama GGUF as the bundled model ships: Q4_1 matrices, an F32 norm, and an F16 matrix whose rows (40)
    Q8_0's 32-wide blocks do not divide."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
    writer.add_token_types([2, 3, 3, 1])
    writer.add_chat_template("{{ messages }}")
    q4_1 = gguf.GGMLQuantizationType.Q4_1
    for name, shape in (("token_embd.weight", (4, 64)), ("blk.0.ffn_up.weight", (128, 64))):
        writer.add_tensor(name, quantize(rng.standard_normal(shape).astype(np.float32), q4_1), raw_dtype=q4_1)
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.add_tensor("blk.0.odd.weight", rng.standard_normal((3, 40)).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1))
            for t in reader.tensors}


def test_converts_the_matrices_and_keeps_the_rest(tmp_path: Path) -> None:
    source = write_q4_1(tmp_path / "m.Q4_1.gguf")
    before = read(source)
    out = gguf_convert.convert(source, "Q8_0", tmp_path / "cache")
    after = read(out)
    assert after.file.weights_type == "Q8_0"
    assert after.file.tensor_bytes == before.file.bytes_as["Q8_0"]  # what the planner budgeted
    assert (after.config, after.special_tokens, after.chat_template) == (
        before.config, before.special_tokens, before.chat_template)
    old, new = _tensors(source), _tensors(out)
    assert {name: kind for name, (kind, _) in new.items()} == {
        "token_embd.weight": "Q8_0", "blk.0.ffn_up.weight": "Q8_0", "blk.0.attn_norm.weight": "F32",
        "blk.0.odd.weight": "F16"}  # rows of 40: Q8_0's 32-wide blocks do not divide them, kept as stored
    for name, (_, values) in old.items():  # 8-bit steps of each 32-block's largest value
        error = np.abs(new[name][1] - values)
        assert float(error.max()) <= float(np.abs(values).max()) / 127, name
    assert np.array_equal(new["blk.0.attn_norm.weight"][1], old["blk.0.attn_norm.weight"][1])


def test_made_once_and_reused(tmp_path: Path) -> None:
    source = write_q4_1(tmp_path / "m.Q4_1.gguf")
    out = gguf_convert.convert(source, "Q8_0", tmp_path / "cache")
    made = out.stat().st_mtime_ns
    assert gguf_convert.convert(source, "Q8_0", tmp_path / "cache") == out
    assert out.stat().st_mtime_ns == made
    source.write_bytes(source.read_bytes())  # reinstalled: the same content, a new mtime: the conversion is reused
    assert gguf_convert.convert(source, "Q8_0", tmp_path / "cache") == out and out.stat().st_mtime_ns == made
    write_q4_1(source, seed=1)  # another version of the file: converted again, the old conversion removed
    again = gguf_convert.convert(source, "Q8_0", tmp_path / "cache")
    assert again != out and again.is_file() and not out.exists()


def test_a_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf.quants

    def broken(data: np.ndarray, qtype: object) -> np.ndarray:
        raise MemoryError("no room")

    source = write_q4_1(tmp_path / "m.Q4_1.gguf")
    monkeypatch.setattr(gguf.quants, "quantize", broken)
    with pytest.raises(MemoryError):
        gguf_convert.convert(source, "Q8_0", tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_refuses_other_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected one of Q8_0"):
        gguf_convert.convert(write_q4_1(tmp_path / "m.gguf"), "Q4_0", tmp_path / "cache")
