"""AWQ 4-bit quantization with llm-compressor, run inside the quantization environment.

This file is executed by that environment's Python (`python worker.py job.json`), never imported by
the server: llm-compressor pins torch/transformers/compressed-tensors versions that clash with vLLM's.
It uses only the standard library and llm-compressor's stack. Progress goes to stdout as lines starting
`PROGRESS <stage>` (runner.py reports what follows); the result is a compressed-tensors checkpoint in
job["out_dir"] that vLLM loads as W4A16 (do not force quantization="awq" on it). With job["evaluation"] (the
quality gate's holes, evaluation/gate.py) it also answers them with the source weights and with the 4-bit
ones, into that directory.
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


def _decoder_layers(model) -> list:  # type: ignore[no-untyped-def]
    """The model's repeated blocks (its longest ModuleList), which llm-compressor's sequential pipeline
    calibrates one at a time."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def _report_layers(model, stage: str) -> list:  # type: ignore[no-untyped-def]
    """PROGRESS lines as calibration reaches each layer, with the elapsed time and an estimate of what is
    left from the pace so far. llm-compressor's sequential pipeline traces through the decoder layers and
    calls their leaf modules (the Linear layers) from generated code, so a hook on the layer itself never
    fires: the first call of any of a layer's leaves marks it reached. Returns the hook handles."""
    layers = _decoder_layers(model)
    started = time.monotonic()
    reached: set[int] = set()

    def hook(index: int):  # type: ignore[no-untyped-def]
        def pre(module, args):  # type: ignore[no-untyped-def]
            if index in reached:
                return
            reached.add(index)
            elapsed = time.monotonic() - started
            eta = f" eta {elapsed / index * (len(layers) - index):.0f}s" if index else ""
            print(f"PROGRESS {stage} layer {index + 1}/{len(layers)} elapsed {elapsed:.0f}s{eta}", flush=True)
        return pre

    return [leaf.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)
            for leaf in layer.modules() if not list(leaf.children())]


def _complete(model, tokenizer, evaluation: dict, stage: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Greedy completions of the quality gate's prompts (raw text, special tokens kept: the server's
    cleaner cuts at them). Chat prompts are wrapped in the model's chat template here."""
    import torch

    texts = []
    started = time.monotonic()
    for i, item in enumerate(evaluation["prompts"]):
        prompt = item["text"]
        if item["chat"]:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not item["chat"])
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=item["max_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False))
        elapsed = time.monotonic() - started
        left = elapsed / (i + 1) * (len(evaluation["prompts"]) - i - 1)
        print(f"PROGRESS {stage} {i + 1}/{len(evaluation['prompts'])} samples elapsed {elapsed:.0f}s eta {left:.0f}s",
              flush=True)
    return texts


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
    evaluation = job.get("evaluation")
    quality: dict = {}
    if evaluation:  # the source's answers, before calibration changes the weights
        model.eval()
        quality["source"] = _complete(model, tokenizer, evaluation, "evaluate-source")
    hooks = _report_layers(model, "calibrate")
    oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=job["max_seq_len"],
            num_calibration_samples=len(job["texts"]), shuffle_calibration_samples=False)
    for handle in hooks:
        handle.remove()
    print(f"PROGRESS calibrate done {time.monotonic() - started:.0f}s", flush=True)
    if evaluation:  # the same prompts through the quantized weights (llm-compressor's quantize-dequantize)
        quality["quantized"] = _complete(model, tokenizer, evaluation, "evaluate-4bit")
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        quality["special_tokens"] = sorted(set(tokenizer.all_special_tokens) | set(added))
        with open(f"{job['out_dir']}/{evaluation['file']}", "w", encoding="utf-8") as f:
            json.dump({**evaluation, **quality}, f)  # the holes with both sets of answers
    # Ship 16-bit: embeddings, norms and scales in bf16, as the planner's memory model and vLLM's W4A16
    # kernels expect.
    model = model.to(torch.bfloat16)
    model.save_pretrained(job["out_dir"], save_compressed=True)
    tokenizer.save_pretrained(job["out_dir"])
    print(f"PROGRESS save 1/1 {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
