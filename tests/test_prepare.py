"""Model preparation's download accounting: bytes a Hub download has written, read from the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from server.prepare import DownloadWatch


def test_download_progress_is_the_growth_of_the_repos_blobs(tmp_path: Path) -> None:
    """huggingface_hub's layout: models--{org}--{name}/blobs/<etag>, written as <etag>.incomplete first. What was
    there before the download started does not count."""
    blobs = tmp_path / "models--Qwen--Qwen2.5-Coder-7B" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "config").write_bytes(b"x" * 100)
    watch = DownloadWatch(tmp_path, "Qwen/Qwen2.5-Coder-7B")
    assert watch.done() == 0
    (blobs / "shard1.incomplete").write_bytes(b"x" * 1000)
    assert watch.done() == 1000
    (blobs / "shard1.incomplete").rename(blobs / "shard1")
    (blobs / "shard2.incomplete").write_bytes(b"x" * 500)
    assert watch.done() == 1500
    assert DownloadWatch(tmp_path, "Qwen/Qwen2.5-Coder-14B").done() == 0  # another repo: nothing yet, no folder
