"""The installed vLLM's own decision whether it runs an architecture (its registry, then its Transformers backend),
so models nobody measured are planned on the engine that can load them."""

from __future__ import annotations

import pytest

from server.engine.support import vllm_refusal
from server.planner.derive import VLLM_REFUSES

pytest.importorskip("vllm", reason="the decision is the installed vLLM's")


@pytest.mark.parametrize(("architecture", "encoder_decoder", "refused"), [
    ("LlamaForCausalLM", False, None),
    ("GPTBigCodeForCausalLM", False, None),
    ("Qwen2ForCausalLM", False, None),
    ("CodeGenForCausalLM", False, "cannot take vLLM's attention"),
    ("XGLMForCausalLM", False, "cannot take vLLM's attention"),
    # in no list here: vLLM 0.32 refuses it ("Model architectures [GPTNeoForCausalLM] are not supported for now")
    ("GPTNeoForCausalLM", False, "cannot take vLLM's attention"),
    ("T5ForConditionalGeneration", True, "decoder-only"),
    ("EncoderDecoderModel", True, "decoder-only"),
    ("NoSuchModelForCausalLM", False, "nor a Transformers class"),
])
def test_vllms_own_rule(architecture: str, encoder_decoder: bool, refused: str | None) -> None:
    reason = vllm_refusal(architecture, encoder_decoder, remote_code=False)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "vLLM" in reason


def test_remote_code_is_left_to_the_measured_list() -> None:
    assert vllm_refusal("CodeT5pEncoderDecoderModel", True, remote_code=True) is None


def test_the_measured_list_holds_for_the_installed_vllm() -> None:
    for architecture in VLLM_REFUSES:
        if architecture != "CodeT5pEncoderDecoderModel":  # remote code: vLLM would have to run it to decide
            encoder_decoder = architecture in ("T5ForConditionalGeneration", "EncoderDecoderModel")
            assert vllm_refusal(architecture, encoder_decoder, remote_code=False), architecture
