"""The typing session the latency benchmark and the locust typing user replay: a real file, a cursor inside a
function, the file's own next characters typed, a request every two characters."""

from __future__ import annotations

import itertools

from loadtests.typing_session import TypingSession


def test_each_keystroke_extends_the_prefix_and_keeps_the_suffix() -> None:
    session = TypingSession(seed=7)
    strokes = list(session.keystrokes())
    assert len(strokes) == len(session.typed) // 2 + 1 and len(strokes) > 10
    assert all(s.suffix == session.suffix for s in strokes)
    for before, after in itertools.pairwise(strokes):
        assert after.prefix.startswith(before.prefix) and len(after.prefix) == len(before.prefix) + 2
    source = session.path.read_text(encoding="utf-8", errors="replace")
    assert session.base_prefix + session.typed + session.suffix in source  # the file's own text, in order
    assert len(session.base_prefix) == 1500 * 4 and session.suffix.count("\n") == 40


def test_the_session_is_seeded() -> None:
    assert TypingSession(seed=3).typed == TypingSession(seed=3).typed
    assert len({TypingSession(seed=s).base_prefix[-200:] for s in range(5)}) > 1
