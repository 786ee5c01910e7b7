"""The measure behind the suffix line rule's bound: holes of real code answered correctly, through the same
two suffix stages the cleaner chains."""

from __future__ import annotations

from itertools import islice

from loadtests.suffix_lines import answer, holes


def test_holes_are_whole_lines_after_the_cursor_lines_indentation() -> None:
    sample = list(islice(holes(every=500), 40))
    assert len(sample) == 40
    for prefix, middle, suffix in sample:
        assert middle.strip() and not middle.endswith("\n") and suffix.startswith("\n")
        assert not prefix[prefix.rfind("\n") + 1:].strip()  # the cursor sits after the indentation


def test_the_answer_goes_through_both_suffix_stages() -> None:
    prefix, suffix = "def f():\n    ", "\n    # note\n    y = compute(x)\n"
    assert answer(prefix, suffix, "x = 1\n    y = compute(x)", 3, (2, 3)) == "x = 1"  # SuffixLines
    assert answer(prefix, suffix, "x = 1\n    y = compute(x)", 0, (2, 3)) == "x = 1\n    y = compute(x)"
    assert answer(prefix, suffix, "x = 1\n    # note", 0, (2, 3)) == "x = 1"  # SuffixCut
