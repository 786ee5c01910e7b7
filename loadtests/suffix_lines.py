"""How many correct answers the suffix rules cut short (prints figures; offline, no server).

A correct answer to a hole is the code that was there, so every cut in it is a mistake: it happens where a
line of the middle recurs among the suffix's first lines. Holes as evaluation/samples.py cuts them (after a
line's indentation, 1 to 4 whole lines of the standard library's packages, 2,000 characters of prefix and
1,000 of suffix), at every `--every`-th line of every file. Prints the share cut short by the first-line
rule alone and with fim/suffix.py's SuffixLines for 1 to 5 lines, at the evidence it asks further
down and at one less. The figures behind SUFFIX_LINES and LATER_LINE_EVIDENCE:

    .venv/bin/python loadtests/suffix_lines.py              # about a minute on 2 cores
    .venv/bin/python loadtests/suffix_lines.py --every 1    # every hole
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.evaluation.samples import PREFIX_CHARS, SUFFIX_CHARS, source_files
from server.fim.suffix import FIRST_LINE_EVIDENCE, LATER_LINE_EVIDENCE, SuffixCut, SuffixLines

MIDDLE_LINES = (1, 2, 3, 4)  # as evaluation/samples.py's multi-line holes


def holes(every: int) -> Iterator[tuple[str, str, str]]:
    for path in source_files():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        for at in range(0, len(lines), every):
            indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
            prefix = "".join(lines[max(0, at - 200):at])[-PREFIX_CHARS:] + indent
            for size in MIDDLE_LINES:
                middle = "".join(lines[at:at + size])[len(indent):].rstrip("\n")
                if at + size < len(lines) and middle.strip():
                    yield prefix, middle, ("\n" + "".join(lines[at + size:at + size + 60]))[:SUFFIX_CHARS]


def answer(prefix: str, suffix: str, middle: str, lines: int, needed: tuple[int, int]) -> str:
    """The middle through the two suffix stages, as InfillCleaner chains them."""
    text = middle
    for stage in (SuffixCut(suffix), SuffixLines(prefix, suffix, lines, needed)):
        text = stage.feed(text) + stage.close()
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=4, help="a hole at every N-th line of each file")
    every = parser.parse_args().every
    configs = [(0, (FIRST_LINE_EVIDENCE, LATER_LINE_EVIDENCE))]
    configs += [(lines, (FIRST_LINE_EVIDENCE, later)) for later in (LATER_LINE_EVIDENCE, LATER_LINE_EVIDENCE - 1)
                for lines in range(1, 6)]
    short = dict.fromkeys(configs, 0)
    count = 0
    for prefix, middle, suffix in holes(every):
        count += 1
        for lines, needed in configs:
            short[(lines, needed)] += answer(prefix, suffix, middle, lines, needed) != middle
    print(f"{count} holes of {MIDDLE_LINES[0]}-{MIDDLE_LINES[-1]} whole lines (every {every}th line); cut short:")
    for (lines, needed), cut in short.items():
        rule = f"+ SuffixLines(lines={lines}, needed={needed})" if lines else "first-line rule alone"
        print(f"  {rule:<44} {100 * cut / count:5.2f}%")


if __name__ == "__main__":
    main()
