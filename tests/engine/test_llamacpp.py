"""engine/llamacpp.py and llamacpp_process.py without a child: slots, request bodies, refusals, chunks, flags."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from server.engine.base import SamplingSettings, StructuredOutput
from server.engine.llamacpp import LlamaCppEngine, Slots, _common, _constraint
from server.engine.llamacpp_process import find_llama_server, server_args
from server.errors import InvalidRequest
from server.planner.launch import Launch


def test_a_typist_keeps_the_slot_that_holds_its_prefix() -> None:
    slots = Slots(3)
    a = slots.take([1, 2, 3, 4])
    b = slots.take([9, 9, 9])
    slots.release(a)
    slots.release(b)
    assert slots.take([1, 2, 3, 4, 5]) == a  # the next keystroke: a's cache holds all but the last token
    assert slots.take([9, 9, 8]) == b


def test_without_a_shared_prefix_the_least_recently_used_slot() -> None:
    slots = Slots(2)
    first, second = slots.take([1]), slots.take([2])
    slots.release(second)
    slots.release(first)
    assert slots.take([7]) == second  # released earlier


def test_the_shared_prefix_length() -> None:
    rng = random.Random(3)
    for _ in range(500):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 40))]
        b = a[:rng.randrange(0, len(a) + 1)] + [rng.randrange(4) for _ in range(rng.randrange(0, 40))]
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                        min(len(a), len(b)))
        assert _common(a, b) == _common(b, a) == expected, (a, b)


def test_all_busy_lets_llama_server_queue() -> None:
    slots = Slots(1)
    assert slots.take([1]) == 0 and slots.take([2]) == -1
    slots.release(-1)  # a queued request had no slot of ours: nothing to give back
    assert slots.busy == [1]


def test_a_long_prefix_is_worth_waiting_for() -> None:
    """The next keystroke arrives while the superseded one still holds its slot: it queues there rather than
    prefilling the whole file again in another slot."""
    slots = Slots(2)
    prompt = list(range(1000))
    typist = slots.take(prompt)
    assert slots.take([*prompt, 5]) == typist and slots.busy[typist] == 2
    slots.release(typist)
    assert slots.busy[typist] == 1
    assert slots.take([7, 8]) != typist  # a short shared prefix: a free slot


@pytest.mark.parametrize(("structured", "expected"), [
    (None, {}),
    (StructuredOutput(json_schema={"type": "integer"}), {"json_schema": {"type": "integer"}}),
    (StructuredOutput(json_object=True), {"json_schema": {"type": "object"}}),
    (StructuredOutput(choice=("yes", 'say "no"')), {"grammar": 'root ::= "yes" | "say \\"no\\""'}),
    (StructuredOutput(grammar='root ::= "a"'), {"grammar": 'root ::= "a"'}),
], ids=["none", "schema", "object", "choice", "grammar"])
def test_constraints_in_llama_servers_fields(structured: StructuredOutput | None, expected: dict[str, Any]) -> None:
    assert _constraint(structured) == expected


class _Tokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def _engine() -> LlamaCppEngine:
    engine = LlamaCppEngine.__new__(LlamaCppEngine)  # no child: only the pure methods run
    engine._fast = _Tokenizer()
    engine.max_model_len = 4096
    return engine


@pytest.mark.parametrize(("sampling", "param"), [
    (SamplingSettings(min_tokens=2), "min_tokens"),
    (SamplingSettings(allowed_token_ids=(1,)), "allowed_token_ids"),
    (SamplingSettings(bad_words=("x",)), "bad_words"),
    (SamplingSettings(include_stop_str_in_output=True), "include_stop_str_in_output"),
    (SamplingSettings(skip_special_tokens=False), "skip_special_tokens"),
    (SamplingSettings(structured=StructuredOutput(regex="a+", param="structured_outputs.regex")),
     "structured_outputs.regex"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_what_it_cannot_honour_is_refused_by_name(sampling: SamplingSettings, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _engine().check(sampling)
    assert caught.value.param == param


def test_what_it_honours_passes() -> None:
    _engine().check(SamplingSettings(top_k=5, min_p=0.1, repetition_penalty=1.2, ignore_eos=True, seed=3,
                                     logit_bias=((1, -5.0),), structured=StructuredOutput(json_schema={})))


def test_request_body_sets_every_sampler() -> None:
    body = _engine()._body([5, 6], SamplingSettings(max_tokens=7, temperature=0.0, stop=["\n"], seed=1,
                                                    logprobs=0, logit_bias=((3, 2.0),)), slot=2)
    assert body["prompt"] == [5, 6] and body["id_slot"] == 2 and body["cache_prompt"] and body["stream"]
    # llama.cpp's own defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) would change OpenAI's sampling
    assert (body["top_k"], body["min_p"], body["repeat_penalty"], body["top_p"]) == (0, 0.0, 1.0, 1.0)
    assert body["n_predict"] == 7 and body["seed"] == 1 and body["n_probs"] == 1
    assert body["logit_bias"] == [[3, 2.0]] and body["stop"] == ["\n"]


@pytest.mark.parametrize(("chunk", "finish", "text", "stop_string"), [
    ({"content": "ab", "tokens": [0, 1], "stop": False}, None, "ab", None),
    ({"content": "", "tokens": [], "stop": True, "stop_type": "limit"}, "length", "", None),
    ({"content": "", "tokens": [], "stop": True, "stop_type": "eos"}, "stop", "", None),
    ({"content": "", "tokens": [], "stop": True, "stop_type": "word", "stopping_word": "\n"}, "stop", "", "\n"),
    ({"content": "a<end>", "tokens": [0, 9], "stop": False}, "stop", "a", None),  # 9: a stop token id
], ids=["tokens", "limit", "eos", "word", "stop-token-id"])
def test_chunks_become_deltas(chunk: dict[str, Any], finish: str | None, text: str, stop_string: str | None) -> None:
    delta = _engine()._delta(chunk, 0, {9})
    assert (delta.finish_reason, delta.text, delta.stop_string) == (finish, text, stop_string)


def test_flags_give_each_slot_the_whole_context() -> None:
    launch = Launch(model="/m.gguf", served_name="m", device="cpu", dtype="float32", online_quantization=None,
                    tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=4096, max_num_seqs=8,
                    max_num_batched_tokens=512, prefix_caching=True, kv_block_tokens=None, kv_cache_dtype="auto",
                    gpu_memory_fraction=None, kv_cache_bytes=None, eager=True, trust_remote_code=False,
                    cpu_cores=(0, 1), engine="llamacpp")
    args = server_args(launch, 8080)
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert (flag["--ctx-size"], flag["--parallel"], flag["--threads"]) == ("32768", "8", "2")
    assert "--no-kv-unified" in args and "--metrics" in args


def test_finding_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    assert find_llama_server(binary) == str(binary)
    assert find_llama_server(tmp_path / "missing") is None  # a setting that points nowhere is not a search
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    assert find_llama_server(None) in (str(binary), str(Path(sys.executable).parent / "llama-server"))


def test_the_fast_tokenizer_agrees_with_transformers(catalog: Any) -> None:
    """The llama.cpp engine tokenizes with the `tokenizers` library (Transformers loads in the background): the same
    ids and the same facts as the Transformers tokenizer every other engine uses, on the bundled model's."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from server.engine.llamacpp import fast_tokenizer_facts
    from server.engine.tokenizer import tokenizer_facts
    from server.prepare import prepare_bundled
    from tests.conftest import make_settings

    directory = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    fast, full = Tokenizer.from_file(str(directory / "tokenizer.json")), AutoTokenizer.from_pretrained(directory)
    assert fast_tokenizer_facts(fast, directory) == tokenizer_facts(full)
    text = "def fib(n):\n    <|im_start|>héllo\t"
    for special in (True, False):
        assert fast.encode(text, add_special_tokens=special).ids == full.encode(text, add_special_tokens=special)


def _launch() -> Launch:
    return Launch(model="/m.gguf", served_name="m", device="cpu", dtype="float32", online_quantization=None,
                  tensor_parallel_size=1, pipeline_parallel_size=1, max_model_len=256, max_num_seqs=1,
                  max_num_batched_tokens=512, prefix_caching=True, kv_block_tokens=None, kv_cache_dtype="auto",
                  gpu_memory_fraction=None, kv_cache_bytes=None, eager=True, trust_remote_code=False, engine="llamacpp")


@pytest.mark.parametrize(("output", "out_of_memory"), [
    ("llama_model_load: error loading model: tensor data is not within the file bounds", False),
    ("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 99999999999", True),
], ids=["bad-file", "memory"])
def test_a_child_that_exits_while_loading_says_why(tmp_path: Path, output: str, out_of_memory: bool) -> None:
    """The child's last lines become the start error; an allocation failure lets the plan's next option start."""
    from server.engine.base import EngineStartError
    from server.engine.llamacpp_process import LlamaServer

    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\necho '{output}'\nexit 1\n")
    binary.chmod(0o755)
    with pytest.raises(EngineStartError) as caught:
        LlamaServer.start(_launch(), str(binary))
    assert output in str(caught.value) and "exit status 1" in str(caught.value)
    assert caught.value.out_of_memory is out_of_memory


def test_the_chat_tokenizer_loads_without_torch_and_renders_as_autotokenizer(catalog: Any) -> None:
    """Chat templates and tool parsers on llama.cpp use a Transformers tokenizer loaded beside llama-server; /ready
    waits for it (the plan's chat markers are read from the rendered template). Without torch it loads in ~1.6 s on
    2 cores; AutoTokenizer imports torch first (~4.3 s), which held /ready ~3 s after llama-server was up."""
    from transformers import AutoTokenizer

    from server.engine.chat import render_chat
    from server.engine.llamacpp import _transformers_tokenizer
    from server.prepare import prepare_bundled
    from tests.conftest import make_settings

    directory = prepare_bundled(make_settings().cache_dir, catalog.bundled())
    code = ("import sys; from server.engine.llamacpp import _transformers_tokenizer; "
            f"_transformers_tokenizer({str(directory)!r}); print('torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert loaded.stdout.strip() == "False", loaded.stderr[-2000:]
    ours, theirs = _transformers_tokenizer(str(directory)), AutoTokenizer.from_pretrained(directory)
    tools = [{"type": "function", "function": {"name": "open", "parameters": {"type": "object"}}}]
    for messages in ([{"role": "user", "content": "hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]):
        assert render_chat(ours, messages, None, tools, None) == render_chat(theirs, messages, None, tools, None)
    assert ours.get_vocab() == theirs.get_vocab()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_goes_when_codeserve_is_killed_outright(tmp_path: Path) -> None:
    """A parent that starts a child with llama-server's setup (from a worker thread, as serve.py's load does), then
    dies by SIGKILL: the child gets SIGTERM instead of living on with the model's memory."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys, threading, time\n"
        "from server.engine.llamacpp_process import child_setup\n"
        "def start():\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=child_setup(None))\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(60)  # the starting thread lives on, as the event loop's executor threads do\n"
        "threading.Thread(target=start).start()\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[2]))
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(0.5)
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE  # not sent off while its parent lives
    parent.kill()
    parent.wait()
    child.wait(timeout=10)  # psutil.TimeoutExpired if it lives on
