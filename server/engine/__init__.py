"""Engines behind one small protocol (base.py): vLLM (GPU or CPU build, vllm.py) and Transformers' own generate()
for the architectures vLLM refuses (hf.py). The deterministic fake engine the tests use is tests/fake_engine.py."""
