"""Tiny random-weight models of any architecture, built from Transformers configs with the bundled model's
tokenizer: serving is tested on real architectures without downloading anything (seconds to build)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from server.planner.launch import Launch

TINY = {"hidden": 128, "heads": 2, "layers": 2, "ffn": 256, "positions": 512}  # head size 64: every CPU kernel has it


def tiny_config(kind: str, vocab_size: int) -> Any:
    import transformers

    h, n, layers, ffn, pos = TINY["hidden"], TINY["heads"], TINY["layers"], TINY["ffn"], TINY["positions"]
    llama_like = {"hidden_size": h, "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": n,
                  "max_position_embeddings": pos, "vocab_size": vocab_size}
    configs = {
        # CodeGen splits its fused qkv into 4 model-parallel parts: 4 heads at least
        "codegen": lambda: transformers.CodeGenConfig(n_layer=layers, n_embd=2 * h, n_head=2 * n, n_inner=ffn,
                                                      n_positions=pos, n_ctx=pos, rotary_dim=16, vocab_size=vocab_size),
        "xglm": lambda: transformers.XGLMConfig(num_layers=layers, d_model=h, attention_heads=n, ffn_dim=ffn,
                                                max_position_embeddings=pos, vocab_size=vocab_size),
        "t5": lambda: transformers.T5Config(num_layers=layers, num_decoder_layers=layers, d_model=h, num_heads=n,
                                            d_kv=h // n, d_ff=ffn, vocab_size=vocab_size,
                                            # T5 ties its embeddings (Transformers 5 forces it), so a random decoder
                                            # repeats its start token: start at a plain word, not a special token
                                            decoder_start_token_id=1000),
        # Transformers' composite (EncoderDecoderModel), CodeT5+ 2B-16B's shape: a narrower CodeGen encoder (own
        # embedding, projected to the decoder's width) under a GPT-2 decoder with cross-attention
        "encoder_decoder": lambda: transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
            transformers.CodeGenConfig(n_layer=layers, n_embd=h, n_head=2 * n, n_inner=ffn, n_positions=pos, n_ctx=pos,
                                       rotary_dim=16, vocab_size=vocab_size),
            transformers.GPT2Config(n_layer=layers, n_embd=2 * h, n_head=2 * n, n_inner=2 * ffn, n_positions=pos,
                                    vocab_size=vocab_size, add_cross_attention=True, is_decoder=True),
            decoder_start_token_id=1000),
        # GPT-Neo: in no measured list; vLLM's own rule refuses it (not in its registry, attention not replaceable)
        "gpt_neo": lambda: transformers.GPTNeoConfig(num_layers=layers, hidden_size=h, num_heads=n,
                                                     intermediate_size=ffn, max_position_embeddings=pos,
                                                     attention_types=[[["global", "local"], layers // 2]],
                                                     window_size=256, vocab_size=vocab_size),
        "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(n_layer=layers, n_embd=h, n_head=n, n_inner=ffn,
                                                             n_positions=pos, vocab_size=vocab_size),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**llama_like),
        "llama": lambda: transformers.LlamaConfig(**llama_like, num_key_value_heads=1),
        "qwen2": lambda: transformers.Qwen2Config(**llama_like, num_key_value_heads=1),
    }
    return configs[kind]()


def build(kind: str, out: Path, tokenizer_dir: Path, extra_special: tuple[str, ...] = (), seed: int = 0) -> Path:
    """A saved tiny model of `kind` (random weights, fixed seed) with the bundled tokenizer (plus `extra_special`
    tokens, e.g. T5 sentinels), at `out`; reused when it exists."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    config = tiny_config(kind, len(tokenizer))
    if tokenizer.eos_token_id is not None:
        config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    for part in (getattr(config, "encoder", None), getattr(config, "decoder", None)):
        if part is not None:  # a composite's parts generate with the same special tokens
            part.eos_token_id = part.bos_token_id = config.eos_token_id
            part.pad_token_id = config.pad_token_id
    model = auto.from_config(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_retrieval(kind: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A saved tiny BERT of `kind`: "embedding" (BertModel saved as sentence-transformers saves it: mean pooling,
    normalised, modules.json and 1_Pooling/config.json beside it) or "reranker" (BertForSequenceClassification with
    one label: a cross-encoder), with the bundled tokenizer; reused when it exists."""
    if (out / "config.json").is_file():
        return out
    import json

    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    h, n, layers, ffn, pos = TINY["hidden"], TINY["heads"], TINY["layers"], TINY["ffn"], TINY["positions"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = transformers.BertConfig(hidden_size=h, num_attention_heads=n, num_hidden_layers=layers,
                                     intermediate_size=ffn, max_position_embeddings=pos, vocab_size=len(tokenizer),
                                     pad_token_id=pad, num_labels=1)
    torch.manual_seed(seed)
    if kind == "embedding":
        model: Any = transformers.BertModel(config, add_pooling_layer=False)
    else:
        model = transformers.BertForSequenceClassification(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if kind == "embedding":  # what sentence-transformers' save() writes beside the model (its modules and pooling)
        (tmp / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": h, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
        (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": pos}))
    tmp.rename(out)
    return out


def retrieval_launch(path: Path, pooling: str, pooling_type: str, max_model_len: int) -> Launch:
    """A Transformers pooling engine's Launch for a model build_retrieval saved, on the CPU."""
    return Launch(model=str(path), served_name=path.name, device="cpu", dtype="float32", online_quantization=None,
                  tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=max_model_len, max_num_seqs=16,
                  max_num_batched_tokens=4096, prefix_caching=False, kv_block_tokens=None, kv_cache_dtype="auto",
                  gpu_memory_fraction=None, kv_cache_bytes=None, eager=True, trust_remote_code=False,
                  engine="transformers", pooling=pooling, pooling_type=pooling_type)  # type: ignore[arg-type]
