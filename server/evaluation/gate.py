"""The quality gate of automatic 4-bit quantization: the quantizer answers the same fill-in-the-middle holes
with the source weights and with the 4-bit weights (quantize/worker.py, greedy); here those answers are cleaned
as the server cleans them, scored, stored beside the checkpoint (quality.json), and judged.

Why a gate: published studies put 4-bit losses under 2% for 7B+ code models but over 12% for ~1B ones, so
"4-bit fits" alone does not make the automatic choice defensible for small models."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..fim.clean import InfillContext, clean
from ..fim.prompt import Hole, HoleFormat
from ..fim.templates import FimTemplate, hole_messages
from ..settings import Settings
from .samples import Sample, cut, source_name
from .score import by_kind, score, summary

RAW_FILE = "quality-raw.json"  # the worker's answers
QUALITY_FILE = "quality.json"  # the scores
MAX_TOKENS = {"single-line": 32, "multi-line": 96}  # enough for the references; the gate runs on the CPU too


def job(fim: FimTemplate | None, samples: int, seed: int = 0, by_chat: bool = False) -> dict[str, Any]:
    """What the quantization worker answers: each hole as the server writes it for the family (fim/prompt.py's
    HoleFormat: its FIM prompt, else the prefix to continue), or with `by_chat` the instruction the server sends,
    which the worker wraps in the chat template (the server's own template call needs the engine)."""
    holes = cut(samples, seed)
    chat = fim is None and by_chat
    plain = HoleFormat(fim)

    def text(s: Sample) -> str:
        return hole_messages(s.prefix, s.suffix)[0]["content"] if chat else plain.text(Hole(s.prefix, s.suffix))

    prompts = [{"text": text(s), "chat": chat, "max_tokens": MAX_TOKENS[s.kind]} for s in holes]
    return {"file": RAW_FILE, "prompts": prompts, "samples": [s.to_dict() for s in holes], "seed": seed,
            "samples_from": source_name(), "markers": list(fim.markers + fim.stop) if fim else []}


def job_for(fim: FimTemplate | None, settings: Settings, samples: int | None = None) -> dict[str, Any] | None:
    """The gate's job as the settings ask for it (None: no gate); `samples` overrides
    CODESERVE_QUANT_GATE_SAMPLES (codeserve quantize --gate-samples)."""
    count = settings.quant_gate_samples if samples is None else samples
    if not count or settings.quant_quality_gate == "off":
        return None
    return job(fim, count, by_chat=settings.hole_fill == "chat")


@dataclass(frozen=True)
class Quality:
    source: dict[str, Any]  # exact_match, edit_similarity, samples, by_kind
    quantized: dict[str, Any]
    seed: int
    samples_from: str

    @property
    def loss(self) -> float:
        """The relative drop in edit similarity from the source weights to the 4-bit ones (0.05 = 5% worse)."""
        before = float(self.source["edit_similarity"])
        return (before - float(self.quantized["edit_similarity"])) / before if before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": round(self.loss, 4)}

    def describe(self) -> str:
        return (f"4-bit vs source on {self.source['samples']} FIM holes: edit similarity "
                f"{self.source['edit_similarity']:.3f} -> {self.quantized['edit_similarity']:.3f} "
                f"({self.loss:.1%} loss), exact match {self.source['exact_match']:.3f} -> "
                f"{self.quantized['exact_match']:.3f}")


def judge(checkpoint: Path) -> Quality | None:
    """The checkpoint's scores: read from quality.json, or computed from the worker's answers (and stored);
    None when the checkpoint was made without the gate."""
    stored = checkpoint / QUALITY_FILE
    if stored.is_file():
        data = json.loads(stored.read_text(encoding="utf-8"))
        return Quality(data["source"], data["quantized"], data["seed"], data["samples_from"])
    raw = checkpoint / RAW_FILE
    if not raw.is_file():
        return None
    answers = json.loads(raw.read_text(encoding="utf-8"))
    samples = [Sample(**s) for s in answers["samples"]]
    markers = tuple(answers.get("markers", [])) + tuple(answers.get("special_tokens", []))
    chat = bool(answers["prompts"] and answers["prompts"][0]["chat"])
    quality = Quality(_scores(samples, answers["source"], markers, chat),
                      _scores(samples, answers["quantized"], markers, chat), answers["seed"], answers["samples_from"])
    tmp = stored.with_name(f".{QUALITY_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(quality.to_dict(), indent=2), encoding="utf-8")
    tmp.replace(stored)
    return quality


def _scores(samples: list[Sample], answers: list[str], markers: tuple[str, ...], chat: bool) -> dict[str, Any]:
    scored = [score(s, clean(InfillContext(s.prefix, s.suffix, markers, chat=chat), text))
              for s, text in zip(samples, answers, strict=True)]
    return {**summary(scored), "by_kind": by_kind(scored)}
