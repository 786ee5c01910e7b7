"""engine/gguf_file.py: GGUF files read with llama.cpp's own reader, and refused before a child process starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.engine.gguf_file import GgufError, read, read_cached


def write_gguf(path: Path, arch: str = "llama", context: int = 4096, gate: bool = True) -> Path:
    """A tiny GGUF as llama.cpp's convert scripts write one (gguf-py's GGUFWriter), random weights."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_context_length(context)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_token_list(["<unk>", "<s>", "</s>", "<fim_prefix>", "a", "b"])
    writer.add_token_types([2, 3, 3, 3, 1, 1])
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.zeros((6, 64), dtype=np.float16))
    if gate:
        writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((128, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reads_what_the_planner_needs(tmp_path: Path) -> None:
    found = read(write_gguf(tmp_path / "m.gguf"))
    assert (found.file.architecture, found.file.weights_type, found.file.context_length) == ("llama", "F16", 4096)
    assert found.file.tensor_bytes == (6 * 64 + 128 * 64) * 2
    assert found.config["num_hidden_layers"] == 2 and found.config["num_key_value_heads"] == 2
    assert found.config["tie_word_embeddings"] is True  # no output.weight: the embeddings are reused
    assert found.config["feed_forward_proj"] == "gated"
    assert found.special_tokens == {"<s>", "</s>", "<fim_prefix>"}
    assert found.chat_template == "{{ messages }}"


def test_cached_reading_gives_the_same_description(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    first = read_cached(path, tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").glob("*.json"))
    assert read_cached(path, tmp_path / "cache") == first


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"PK\x03\x04 a zip file"), "is not a GGUF file"),
    (lambda p: p.write_bytes(b"GGUF"), "not a readable GGUF file"),
    (lambda p: p.write_bytes(write_gguf(p.with_name("whole.gguf")).read_bytes()[:-4000]), "truncated"),
    (lambda p: write_gguf(p, arch="no-such-arch"), "llama.cpp cannot run the architecture 'no-such-arch'"),
    (lambda p: None, "is not a file"),
], ids=["not-gguf", "header-only", "truncated", "unknown-architecture", "missing"])
def test_refusals_say_why(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "m.gguf"
    make(path)  # type: ignore[operator]
    with pytest.raises(GgufError, match=message):
        read(path)


def test_the_bundled_model(tmp_path: Path) -> None:
    from server.planner.catalog import load_catalog
    from server.prepare import PrepareError, bundled_gguf_path
    from server.settings import DEFAULT_CATALOG_PATH

    bundled = load_catalog(DEFAULT_CATALOG_PATH).bundled().bundled
    assert bundled is not None
    try:
        path = bundled_gguf_path(bundled)
    except PrepareError as exc:
        pytest.skip(str(exc))
    found = read(path).file
    # DESIGN.md's facts: 30 layers, 8192 positions; the shipped file is Q4_1 (98 MB)
    assert (found.architecture, found.weights_type, found.context_length) == ("llama", "Q4_1", 8192)
    assert 90e6 < found.tensor_bytes < 100e6
