"""Automatic 4-bit (AWQ, W4A16 with zero points) quantization: calibration data, the cache of
checkpoints, the isolated llm-compressor environment and the job that runs in it."""
