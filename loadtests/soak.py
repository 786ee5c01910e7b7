"""Soak with faults: IDE traffic at saturation, mid-stream cancels, bursts of bad input, and one kill -9 of
the engine core in the middle. It plays the orchestrator too: when the server exits (status 3) after the
kill, it starts it again, and reports the time from the kill to ready. A benchmark: it prints figures and
exits non-zero only when a rule below is broken.

    .venv/bin/python loadtests/soak.py                             # 10 min, kill at 5 min, 8 users
    .venv/bin/python loadtests/soak.py --duration 60 --kill-at 30 --users 4 --json out.json

Rules: no 5xx outside the outage (kill -> ready again), no engine request or in-flight request left at the
end, every bad input answered 4xx, RSS of the server process tree flat within 10% over each steady phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtests.run import free_port, wait_ready  # noqa: E402

# What hostile or broken clients send (each was a 500, or worse, before the hardening work): expect 4xx.
BAD_INPUTS: list[tuple[str, bytes]] = [
    ("/v1/completions", b'{"prompt": ""}'),
    ("/v1/completions", b'{"prompt": [-1, 3]}'),
    ("/v1/completions", b'{"prompt": [99999999]}'),
    ("/v1/completions", b'{"prompt": "x", "seed": 18446744073709551616}'),
    ("/v1/completions", b'{"prompt": "x\\ud800"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}'),
    ("/v1/completions", b'{"prompt": "x", "n": 99}'),
    ("/v1/completions", b'{"prompt": '),
    ("/v1/completions", b'{"prompt": "' + b"word " * 1_000_000 + b'"}'),  # 5 MB: over the body cap
    ("/infill", b'{"input_prefix": "def f(", "input_suffix": "\\ud800"}'),
]


@dataclass
class Outcome:
    at_s: float  # when it ended: a request in flight at the kill fails inside the outage
    status: int  # HTTP status, an in-band error's status, or 0 for a connection that failed
    kind: str  # stream | cancelled | bad
    label: str = ""  # what was sent (bad inputs: their path and first bytes)


@dataclass
class Soak:
    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    kill_at_s: float | None = None
    exit_code: int | None = None
    ready_again_s: float | None = None
    rss: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.started

    def in_outage(self, at_s: float) -> bool:
        end = self.ready_again_s if self.ready_again_s is not None else float("inf")
        return self.kill_at_s is not None and self.kill_at_s <= at_s <= end


def code_snippets(seed: int) -> list[tuple[str, str]]:
    """(prefix, suffix) cut at random lines of the standard library's own files (real code, shipped here)."""
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    cuts = []
    for path in rng.sample(files, 40):
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        if len(lines) < 60:
            continue
        at = rng.randrange(30, len(lines) - 20)
        cuts.append(("".join(lines[max(0, at - 40):at]), "".join(lines[at + 1:at + 12])))
    return cuts


async def ide_user(client: httpx.AsyncClient, soak: Soak, cuts: list[tuple[str, str]], stop: asyncio.Event,
                   rng: random.Random) -> None:
    while not stop.is_set():
        prefix, suffix = rng.choice(cuts)
        cancel = rng.random() < 0.3
        body = {"prompt": prefix, "suffix": suffix, "max_tokens": rng.randint(16, 48), "stream": True}
        status = 0
        try:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                status = response.status_code
                async for line in response.aiter_lines():
                    if cancel and line.startswith("data: "):
                        break  # the editor moved on: close the connection mid-stream
                    if line.startswith('data: {"error"'):
                        status = _status_of(json.loads(line[6:])["error"])
        except httpx.HTTPError:
            status = 0
        soak.outcomes.append(Outcome(soak.now(), status, "cancelled" if cancel else "stream"))
        if status != 200:
            await asyncio.sleep(0.5)  # a client's back-off while the server is down


def _status_of(error: dict) -> int:
    return {"engine_unavailable": 503, "model_loading": 503, "engine_error": 500}.get(error.get("code") or "", 500)


async def bad_inputs(client: httpx.AsyncClient, soak: Soak, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for path, raw in BAD_INPUTS:
            label = f"{path} {raw[:40].decode()}"
            try:
                response = await client.post(path, content=raw, headers={"content-type": "application/json"})
                soak.outcomes.append(Outcome(soak.now(), response.status_code, "bad", label))
            except httpx.HTTPError as exc:
                soak.outcomes.append(Outcome(soak.now(), 0, "bad", f"{label} ({type(exc).__name__})"))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


def engine_core(pid: int) -> psutil.Process:
    """vLLM's engine core: the child process that names itself EngineCore (else the largest child)."""
    children = psutil.Process(pid).children(recursive=True)
    named = [c for c in children if "EngineCore" in " ".join([c.name(), *c.cmdline()])]
    return named[0] if named else max(children, key=lambda c: c.memory_info().rss)


class Server:
    def __init__(self, out: Path, port: int):
        self.out, self.port = out, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.out / f"server-{self.starts}.log"
        env = {**os.environ, "CODESERVE_HOST": "127.0.0.1", "CODESERVE_PORT": str(self.port),
               "CODESERVE_FAILURE_EXIT_S": "2"}
        self.process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], cwd=HERE.parent, env=env,
                                        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self.url, self.process, "/ready", log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=120)


async def run(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(args.out, free_port())
    server.start()
    assert server.process is not None
    soak = Soak()
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    cuts = code_snippets(args.seed)
    limits = httpx.Limits(max_connections=args.users + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(ide_user(client, soak, cuts, stop, random.Random(rng.random())))
                 for _ in range(args.users)]
        tasks.append(asyncio.create_task(bad_inputs(client, soak, args.bad_every, stop)))
        await asyncio.sleep(min(args.warm_up, args.kill_at))
        soak.rss["first_start"] = tree_rss(server.process.pid)
        await asyncio.sleep(max(0.0, args.kill_at - soak.now()))
        soak.rss["first_end"] = tree_rss(server.process.pid)
        core = engine_core(server.process.pid)
        soak.kill_at_s = soak.now()
        core.kill()  # what the OOM killer or a GPU Xid does
        soak.exit_code = await asyncio.to_thread(server.process.wait, 120)
        await asyncio.to_thread(server.start)  # the orchestrator's restart
        soak.ready_again_s = soak.now()
        await asyncio.sleep(min(args.warm_up, max(0.0, args.duration - soak.now())))
        soak.rss["second_start"] = tree_rss(server.process.pid)
        await asyncio.sleep(max(0.0, args.duration - soak.now()))
        soak.rss["second_end"] = tree_rss(server.process.pid)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)  # let the server finish aborting the last cancelled streams
        metrics = (await client.get("/metrics")).text
    server.stop()
    return summarize(soak, metrics, args)


def _metric_sum(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {"]
    if not values:
        raise SystemExit(f"soak: {name} is missing from /metrics")
    return sum(values)


def summarize(soak: Soak, metrics: str, args: argparse.Namespace) -> dict:
    streams = [o for o in soak.outcomes if o.kind != "bad"]
    server_errors = [o for o in streams if o.status >= 500 or o.status == 0]
    outside = [o for o in server_errors if not soak.in_outage(o.at_s)]
    bad = [o for o in soak.outcomes if o.kind == "bad" and not soak.in_outage(o.at_s)]
    growth = {phase: soak.rss[f"{phase}_end"] / soak.rss[f"{phase}_start"] - 1 for phase in ("first", "second")}
    summary = {
        "duration_s": round(soak.now(), 1), "users": args.users, "requests": len(streams),
        "cancelled": sum(o.kind == "cancelled" for o in streams), "bad_inputs": len(bad),
        "bad_inputs_not_4xx": sum(not 400 <= o.status < 500 for o in bad),
        "bad_inputs_failed": sorted({f"{o.status} {o.label}" for o in bad if not 400 <= o.status < 500}),
        "server_errors_outside": [(round(o.at_s, 1), o.status, o.kind) for o in outside][:10],
        "server_errors_in_outage": len(server_errors) - len(outside), "server_errors_outside_outage": len(outside),
        "kill_at_s": round(soak.kill_at_s or 0, 1), "exit_code_after_kill": soak.exit_code,
        "recovery_s": round((soak.ready_again_s or 0) - (soak.kill_at_s or 0), 1),
        "in_flight_after": _metric_sum(metrics, "codeserve_requests_in_flight"),
        "engine_unfinished_after": _metric_sum(metrics, "codeserve_engine_unfinished_requests"),
        "rss_bytes": soak.rss, "rss_growth": {k: round(v, 3) for k, v in growth.items()},
    }
    broken = [rule for rule, failed in (
        ("5xx outside the outage", summary["server_errors_outside_outage"] > 0),
        ("bad input not answered 4xx", summary["bad_inputs_not_4xx"] > 0),
        ("engine requests leaked", summary["engine_unfinished_after"] != 0),
        ("in-flight gauge not back to 0", summary["in_flight_after"] != 0),
        ("the server did not exit 3 after the kill", soak.exit_code != 3),
        ("RSS grew more than 10% in a steady phase", any(g > 0.10 for g in growth.values())),
    ) if failed]
    summary["broken_rules"] = broken
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic in all")
    parser.add_argument("--kill-at", type=float, default=300, help="second at which the engine core is killed")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--bad-every", type=float, default=60, help="seconds between bursts of bad input")
    parser.add_argument("--warm-up", type=float, default=20, help="seconds before each RSS baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "soak")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    raise SystemExit(1 if summary["broken_rules"] else 0)


if __name__ == "__main__":
    main()
