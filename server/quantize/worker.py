"""AWQ 4-bit quantization with llm-compressor, run inside the quantization environment.

This file is executed by that environment's Python (`python worker.py job.json`), never imported by
the server: llm-compressor pins torch/transformers/compressed-tensors versions that clash with vLLM's.
It uses only the standard library and llm-compressor's stack. Progress goes to stdout as
`PROGRESS <stage> <done>/<total>` lines; the result is a compressed-tensors checkpoint in job["out_dir"]
that vLLM loads as W4A16 (do not force quantization="awq" on it).
"""

from __future__ import annotations

import json
import sys
import time


def _no_pinning_without_cuda() -> None:
    # llm-compressor pins calibration intermediates for faster host->GPU copies; pinning needs CUDA.
    import torch
    from llmcompressor.pipelines import cache

    if not torch.cuda.is_available():
        cache.IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    started = time.monotonic()
    print("PROGRESS load 0/1", flush=True)
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _no_pinning_without_cuda()
    torch.manual_seed(job["seed"])
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    # On a GPU, calibrate in bf16 (llm-compressor onloads one layer at a time to the GPU; host RAM holds
    # the rest at 2 bytes per parameter). On a CPU, fp32: bf16 is emulated, slowly, without AVX512_BF16.
    calibration_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=calibration_dtype)
    print("PROGRESS load 1/1", flush=True)
    encoded = tokenizer(job["texts"], truncation=True, max_length=job["max_seq_len"], add_special_tokens=False)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=job["bits"], type="int", symmetric=False, strategy="group",
                                 group_size=job["group_size"]),
    )
    recipe = [
        AWQModifier(duo_scaling=True),
        QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
    ]
    print(f"PROGRESS calibrate 0/{len(job['texts'])}", flush=True)
    oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=job["max_seq_len"],
            num_calibration_samples=len(job["texts"]), shuffle_calibration_samples=False)
    print(f"PROGRESS calibrate {len(job['texts'])}/{len(job['texts'])}", flush=True)
    # Ship 16-bit: embeddings, norms and scales in bf16, as the planner's memory model and vLLM's W4A16
    # kernels expect.
    model = model.to(torch.bfloat16)
    model.save_pretrained(job["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(job["out_dir"])
    print(f"PROGRESS save 1/1 {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
