"""Quality of a 4-bit checkpoint against its 16-bit source on held-out code (prints figures).

Held-out text: source files from the standard library's subpackages (`*/*.py`), which calibration
(top-level `*.py` only) never sees. Reports perplexity of both models, the share of positions where
their top-1 next token agrees, and the checkpoint sizes. Runs in the quantization environment, which
has transformers + compressed-tensors to load the W4A16 checkpoint:

    ~/.cache/codeserve/quant-venv/bin/python loadtests/quant_quality.py --source DIR --quantized DIR
"""

from __future__ import annotations

import argparse
import math
import random
import sysconfig
from pathlib import Path


def held_out(samples: int, chars: int, seed: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*/*.py") if p.stat().st_size > 2 * chars and "test" not in p.parts[-2])
    rng = random.Random(seed)
    texts = []
    for _ in range(samples):
        text = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        start = rng.randint(0, len(text) - chars)
        texts.append(text[start:start + chars])
    return texts


def evaluate(model_dir: Path, texts: list[str], max_tokens: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    nll, count, predictions = 0.0, 0, []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
            logits = model(ids).logits[0, :-1]
            targets = ids[0, 1:]
            nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += targets.numel()
            predictions.append(logits.argmax(-1))
    return math.exp(nll / count), predictions, count


def size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--quantized", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    texts = held_out(args.samples, args.max_tokens * 4, args.seed)
    ppl_source, pred_source, tokens = evaluate(args.source, texts, args.max_tokens)
    ppl_quant, pred_quant, _ = evaluate(args.quantized, texts, args.max_tokens)
    agree = sum(int((a == b).sum()) for a, b in zip(pred_source, pred_quant, strict=True)) / tokens
    print(f"held-out code: {args.samples} samples, {tokens} predicted tokens")
    print(f"perplexity  16-bit {ppl_source:.3f}   4-bit {ppl_quant:.3f}   ({ppl_quant / ppl_source - 1:+.1%})")
    print(f"top-1 next-token agreement: {agree:.1%}")
    source_mb, quant_mb = size_bytes(args.source) / 1e6, size_bytes(args.quantized) / 1e6
    print(f"checkpoint  16-bit {source_mb:.1f} MB   4-bit {quant_mb:.1f} MB")


if __name__ == "__main__":
    main()
