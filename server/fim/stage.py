"""The contract of one fill-in-the-middle output rule: a streaming stage, fed the completion's text as it comes,
that passes on what it keeps (fim/clean.py chains the stages)."""

from __future__ import annotations


class Stage:
    reason: str | None = None  # set when the stage decided the completion ends here

    def feed(self, text: str) -> str:
        raise NotImplementedError

    def close(self) -> str:
        """What is still held, at the natural end of the completion."""
        return ""
