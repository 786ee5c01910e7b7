from __future__ import annotations

from server.evaluation.samples import PREFIX_CHARS, SUFFIX_CHARS, cut, source_files, source_root
from server.quantize.recipe import Calibration


def test_the_same_seed_cuts_the_same_holes_and_another_seed_others() -> None:
    assert cut(6, seed=1) == cut(6, seed=1)
    assert [s.id for s in cut(6, seed=1)] != [s.id for s in cut(6, seed=2)]


def test_holes_are_real_code_put_back_together() -> None:
    for sample in cut(20, seed=3):
        path = sample.id.rsplit(":", 1)[0]
        text = (source_root() / path).read_text(encoding="utf-8", errors="replace")
        assert sample.prefix + sample.middle + sample.suffix in text
        assert len(sample.prefix) <= PREFIX_CHARS and len(sample.suffix) <= SUFFIX_CHARS
        assert sample.middle.strip() and sample.suffix.startswith("\n")
        lines = sample.middle.count("\n") + 1
        assert (sample.kind, lines == 1) in {("single-line", True), ("multi-line", False)}


def test_no_sample_comes_from_a_file_quantization_calibrates_on() -> None:
    calibration_dir = source_root()  # Calibration.texts() reads the top-level modules only
    assert Calibration().source == "python-stdlib"
    assert all(path.parent != calibration_dir for path in source_files())
    assert all("/" in sample.id for sample in cut(20))
