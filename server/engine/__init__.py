"""Engines behind one small protocol: vLLM (GPU or CPU build) and a deterministic fake for tests."""
