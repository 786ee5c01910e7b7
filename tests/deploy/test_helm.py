"""The Helm chart: lint, render with several values files, validate every object against Kubernetes'
schemas, and check what matters (GPUs, probes, secrets, security, autoscaling, multi-node)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "codeserve"
VALUES = Path(__file__).parent / "helm_values"
K8S_VERSION = "1.33.0"
CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "LeaderWorkerSet"}


def _helm() -> str:
    helm = shutil.which("helm", path=str(Path(sys.prefix) / "bin")) or shutil.which("helm")
    if helm is None:
        pytest.skip("helm not installed (scripts/setup.sh --test installs it into .venv/bin)")
    return helm


def render(values: str | None = None, *sets: str) -> list[dict[str, Any]]:
    args = [_helm(), "template", "rel", str(CHART), "--namespace", "ai"]
    if values:
        args += ["-f", str(VALUES / values)]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_lint_strict() -> None:
    result = subprocess.run([_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *sorted(p.name for p in VALUES.glob("*.yaml"))])
def test_rendered_objects_are_valid_kubernetes(values: str | None) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] and doc["metadata"]["name"] and doc["spec"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


@pytest.mark.parametrize(("values", "gpus"), [("cpu.yaml", 0), ("gpu-1.yaml", 1), ("gpu-4-tp.yaml", 4)])
def test_gpu_requests_equal_the_values(values: str, gpus: int) -> None:
    resources = container(render(values))["resources"]
    if gpus:
        assert resources["limits"]["nvidia.com/gpu"] == gpus and resources["requests"]["nvidia.com/gpu"] == gpus
    else:
        assert "nvidia.com/gpu" not in resources.get("limits", {})


def test_probes_point_at_health_and_ready() -> None:
    c = container(render("gpu-1.yaml"))
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800  # model downloads
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_security_context_is_locked_down() -> None:
    docs = render("gpu-1.yaml")
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["runtimeClassName"] == "nvidia"


def test_tensor_parallel_gets_shared_memory() -> None:
    docs = render("gpu-4-tp.yaml")
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    config = by_kind(docs, "ConfigMap")[0]["data"]
    assert config["CODESERVE_TENSOR_PARALLEL_SIZE"] == "4"


def test_existing_secret_is_referenced_never_inlined() -> None:
    docs = render("existing-secret.yaml")
    assert by_kind(docs, "Secret") == []
    env = container(docs)["env"]
    assert env == [{"name": "CODESERVE_API_KEYS",
                    "valueFrom": {"secretKeyRef": {"name": "team-codeserve-keys", "key": "keys"}}}]
    assert "team-codeserve-keys" not in str(by_kind(docs, "ConfigMap"))


def test_created_secret_holds_the_keys_and_config_does_not() -> None:
    docs = render("created-secret.yaml")
    secret = by_kind(docs, "Secret")[0]
    assert secret["stringData"] == {"api-keys": "k-one,k-two"}
    assert "k-one" not in str(by_kind(docs, "ConfigMap")) + str(by_kind(docs, "Deployment"))


def test_no_keys_means_no_secret_reference() -> None:
    docs = render()
    assert by_kind(docs, "Secret") == [] and container(docs)["env"] is None


def test_model_cache_on_a_pvc() -> None:
    docs = render()
    pvc = by_kind(docs, "PersistentVolumeClaim")[0]
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert by_kind(render("cpu.yaml"), "PersistentVolumeClaim") == []


def test_config_keys_are_real_settings() -> None:
    fields = {f"CODESERVE_{name.upper()}" for name in Settings.model_fields}
    for values in [None, *sorted(p.name for p in VALUES.glob("*.yaml"))]:
        data = by_kind(render(values), "ConfigMap")[0]["data"]
        unknown = {k for k in data if k.startswith("CODESERVE_") and k not in fields}
        assert unknown == set(), values


def test_autoscaling_hpa() -> None:
    docs = render("autoscaling-hpa.yaml")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "replicas" not in by_kind(docs, "Deployment")[0]["spec"]


def test_autoscaling_keda_on_waiting_requests() -> None:
    scaled = by_kind(render("autoscaling-keda.yaml"), "ScaledObject")[0]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert scaled["spec"]["maxReplicaCount"] == 8


def test_monitoring_objects_carry_the_project_rules() -> None:
    docs = render("gpu-4-tp.yaml")
    monitor = by_kind(docs, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy/prometheus/rules/codeserve.yml").read_text())


def test_chart_rules_file_is_the_deploy_rules_file() -> None:
    assert (CHART / "files" / "codeserve-rules.yml").read_text() == \
        (ROOT / "deploy" / "prometheus" / "rules" / "codeserve.yml").read_text()


def test_ingress_disables_buffering_for_streams() -> None:
    ingress = by_kind(render("gpu-4-tp.yaml"), "Ingress")[0]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def _plan_values(*args: str) -> dict[str, Any]:
    """What `codeserve plan ... --helm-values` prints, parsed."""
    result = subprocess.run([sys.executable, "-m", "server.cli", "plan", *args, "--helm-values"], capture_output=True,
                            text=True, check=True, cwd=ROOT, env={**_clean_env(), "PYTHONPATH": str(ROOT)})
    return dict(yaml.safe_load(result.stdout))


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CODESERVE_") or k == "CODESERVE_CACHE_DIR"}


def _validate_pod_template(template: dict[str, Any]) -> None:
    """A LeaderWorkerSet's pod templates are core PodTemplateSpecs: validated strictly as a PodTemplate."""
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": template}, K8S_VERSION, strict=True)


def test_multi_node_values_come_from_the_plan() -> None:
    planned = _plan_values("--gpus", "8xA100-40GB", "--nodes", "2", "--model", "deepseek-coder-v2")
    assert planned == yaml.safe_load((VALUES / "multinode.yaml").read_text())


def test_multi_node_uses_a_leader_worker_set() -> None:
    docs = render("multinode.yaml")
    assert by_kind(docs, "Deployment") == []
    lws = by_kind(docs, "LeaderWorkerSet")[0]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["spec"]["replicas"] == 1
    group = lws["spec"]["leaderWorkerTemplate"]
    # LeaderWorkerTemplate's fields (sigs.k8s.io/lws api/leaderworkerset/v1): size counts the leader
    assert set(group) == {"size", "restartPolicy", "leaderTemplate", "workerTemplate"}
    assert group["size"] == 2 and group["restartPolicy"] in ("RecreateGroupOnPodRestart", "None")
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        _validate_pod_template(template)
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    assert "ray start --head" in leader["command"][-1] and leader["readinessProbe"]["httpGet"]["path"] == "/ready"
    worker = group["workerTemplate"]["spec"]["containers"][0]
    assert "LWS_LEADER_ADDRESS" in worker["command"][-1]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8 == leader["resources"]["limits"]["nvidia.com/gpu"]
    config = by_kind(docs, "ConfigMap")[0]["data"]
    # the server plans TP x PP itself from the node count; no hand-written engine arguments
    assert config["CODESERVE_NODES"] == "2" and "CODESERVE_ENGINE_ARGS" not in config
    assert config["CODESERVE_PRECISION"] == "bf16"
    assert by_kind(docs, "Service")[0]["spec"]["selector"]["role"] == "leader"


def test_the_leader_plans_what_the_values_pinned() -> None:
    """Inside the leader pod (8 GPUs, the chart's config) the server plans the same TP x PP as the values' plan."""
    from server.planner.catalog import load_catalog
    from server.planner.choose import choose
    from server.planner.hardware import simulated
    from tests.conftest import FIXED_CPU, make_settings

    config = by_kind(render("multinode.yaml"), "ConfigMap")[0]["data"]
    settings = make_settings(**{k.removeprefix("CODESERVE_").lower(): v for k, v in config.items()
                                if k.startswith("CODESERVE_") and k not in ("CODESERVE_HOST", "CODESERVE_PORT",
                                                                             "CODESERVE_CACHE_DIR")})
    plan = choose(simulated("8xA100-40GB", FIXED_CPU), load_catalog(settings.catalog_path), settings)
    assert (plan.chosen.tensor_parallel_size, plan.chosen.pipeline_parallel_size) == (8, 2)


def test_routing_is_a_plain_service_by_default() -> None:
    docs = render()
    service = by_kind(docs, "Service")[0]["spec"]
    assert "sessionAffinity" not in service and [d for d in docs if "router" in d["metadata"]["name"]] == []


def test_session_affinity_keeps_a_client_on_one_replica() -> None:
    service = by_kind(render("affinity.yaml"), "Service")[0]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 3600


def test_ingress_affinity_header_keeps_an_api_key_on_one_replica() -> None:
    """Responses' previous_response_id needs turn two on turn one's replica (its store is in memory)."""
    annotations = by_kind(render(None, "ingress.enabled=true", "ingress.affinityHeader=Authorization"),
                          "Ingress")[0]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_authorization"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # the others stay
    header = by_kind(render(None, "ingress.enabled=true", "ingress.affinityHeader=X-Session-Id"), "Ingress")[0]
    assert header["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_session_id"
    plain = by_kind(render(None, "ingress.enabled=true"), "Ingress")[0]["metadata"]["annotations"]
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in plain
    with pytest.raises(subprocess.CalledProcessError):  # not a header name: the schema refuses it
        render(None, "ingress.enabled=true", "ingress.affinityHeader=$http_x")


def test_router_mode_puts_production_stacks_router_in_front() -> None:
    docs = render("router.yaml")
    server, router = (next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == name)
                      for name in ("rel-codeserve", "rel-codeserve-router"))
    server_labels = server["spec"]["template"]["metadata"]["labels"]
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    container_ = router["spec"]["template"]["spec"]["containers"][0]
    args = container_["args"]
    flag = dict(zip(args[::2], args[1::2], strict=True))
    assert flag["--service-discovery"] == "k8s" and flag["--routing-logic"] == "prefixaware"
    assert flag["--k8s-namespace"] == "ai" and flag["--k8s-port"] == "8000"
    # the router's label selector picks the server pods, never its own
    selector = dict(item.split("=") for item in flag["--k8s-label-selector"].split(","))
    assert selector.items() <= server_labels.items() and not selector.items() <= router_labels.items()
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container_["env"]}
    assert env == {"VLLM_API_KEY": {"name": "router-key", "key": "key"}}
    # the router may read pods, nothing else
    role = by_kind(docs, "Role")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = by_kind(docs, "RoleBinding")[0]
    assert binding["subjects"][0]["name"] == router["spec"]["template"]["spec"]["serviceAccountName"]
    # both Services select only their own pods; the Ingress points at the router
    services = {s["metadata"]["name"]: s["spec"]["selector"] for s in by_kind(docs, "Service")}
    assert services["rel-codeserve"].items() <= server_labels.items()
    assert not services["rel-codeserve"].items() <= router_labels.items()
    assert services["rel-codeserve-router"].items() <= router_labels.items()
    backend = by_kind(docs, "Ingress")[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "rel-codeserve-router"
    # the PodDisruptionBudget counts server pods only
    pdb = by_kind(docs, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= server_labels.items() and not pdb.items() <= router_labels.items()


def test_session_routing_passes_its_header() -> None:
    docs = render("router.yaml", "routing.router.logic=session", "routing.router.sessionKey=x-session")
    args = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("router"))[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--routing-logic") + 1] == "session" and args[args.index("--session-key") + 1] == "x-session"



def test_helm_test_hook_calls_models() -> None:
    pod = next(d for d in render() if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/v1/models" in pod["spec"]["containers"][0]["command"][-1]


def test_no_quantization_job_by_default() -> None:
    assert by_kind(render(), "Job") == [] and by_kind(render("gpu-1.yaml"), "Job") == []


def quantize_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = by_kind(docs, "Job")
    return job


def test_quantization_job_writes_where_the_server_reads() -> None:
    """A plain Job (no hook: `helm install` does not wait hours on it) beside the Deployment, with the server's
    settings, the same cache volume at the same path, and a GPU; on the server's node (a ReadWriteOnce volume)."""
    docs = render("quantize-job.yaml")
    job = quantize_job(docs)
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    pod, server_pod = job["spec"]["template"]["spec"], by_kind(docs, "Deployment")[0]["spec"]["template"]
    (job_container,) = pod["containers"]
    server = server_pod["spec"]["containers"][0]
    assert job_container["command"] == ["codeserve"]
    assert job_container["args"][:2] == ["quantize", "--passed-over"]
    assert job_container["envFrom"] == server["envFrom"]
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache == next(v for v in server_pod["spec"]["volumes"] if v["name"] == "cache")
    assert job_container["volumeMounts"] == [m for m in server["volumeMounts"] if m["name"] == "cache"]
    resources = job_container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert resources["requests"]["memory"] == "80Gi" and resources["requests"]["ephemeral-storage"] == "20Gi"
    assert pod["restartPolicy"] == "Never" and job["spec"]["ttlSecondsAfterFinished"] == 86400
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= server_pod["metadata"]["labels"].items()
    assert not term["labelSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    config = by_kind(docs, "ConfigMap")[0]["data"]
    assert config["CODESERVE_CACHE_DIR"].startswith(job_container["volumeMounts"][0]["mountPath"] + "/")


def test_quantization_job_args_are_a_command_codeserve_takes() -> None:
    from server.cli import build_parser

    for sets in [(), ("quantizeJob.model=qwen2.5-coder-7b", "quantizeJob.groupSize=64", "quantizeJob.gateSamples=0",
                      "quantizeJob.tensorParallelSize=2", "quantizeJob.gpuCount=0")]:
        container_ = quantize_job(render("quantize-job.yaml", *sets))["spec"]["template"]["spec"]["containers"][0]
        args = build_parser().parse_args(container_["args"])
        assert args.func.__name__ == "cmd_quantize" and (args.samples, args.seq_len) == (32, 256)
        if sets:
            assert (args.model, args.passed_over, args.group_size, args.tp, args.gate_samples) == (
                "qwen2.5-coder-7b", False, 64, 2, 0)
            assert "nvidia.com/gpu" not in container_["resources"]["limits"]  # gpuCount 0: calibrate on the CPU
        else:
            assert (args.model, args.passed_over, args.gate_samples) == (None, True, None)


def test_quantization_job_is_replaced_only_when_what_it_runs_changes() -> None:
    """A Job's pod template is immutable: its name carries a digest of what it runs."""
    name = quantize_job(render("quantize-job.yaml"))["metadata"]["name"]
    assert name == quantize_job(render("quantize-job.yaml", "replicaCount=3"))["metadata"]["name"]
    assert name != quantize_job(render("quantize-job.yaml", "quantizeJob.samples=64"))["metadata"]["name"]
    assert name != quantize_job(render("quantize-job.yaml", "config.CODESERVE_MAX_START_MINUTES=10"))[
        "metadata"]["name"]


def test_quantization_job_needs_the_persistent_cache() -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render("quantize-job.yaml", "persistence.enabled=false")
    assert "quantizeJob.enabled needs persistence.enabled" in info.value.stderr


@pytest.mark.parametrize("bad", ["gpu.count=-1", "config.HOME=/x", "service.port=0", "image.flavor=tpu",
                                 "quantizeJob.groupSize=100", "quantizeJob.samples=0"])
def test_schema_rejects_bad_values(bad: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render(None, bad)
    # helm's own words for a values.schema.json violation, naming the key: not any other failure
    assert "values don't meet the specifications of the schema" in info.value.stderr, info.value.stderr
    assert bad.split("=")[0].split(".")[-1] in info.value.stderr


# Keys whose contents are free-form data (documented once, on the key itself).
FREE_FORM = {"config", "resources", "tolerations", "podSecurityContext", "securityContext", "annotations", "hpa",
             "engineArgs", "nodeSelector", "affinity", "podAnnotations", "hosts", "tls", "labels", "accessModes",
             "imagePullSecrets"}


def test_every_value_is_documented() -> None:
    """helm-docs style: every leaf (and every free-form map) has a `# --` comment right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        ancestors = [k for _, k in stack]
        stack.append((indent, key))
        if any(a in FREE_FORM for a in ancestors):
            continue
        if not rest and key not in FREE_FORM:
            continue  # a section: its leaves carry the docs
        above = []
        for j in range(i - 1, -1, -1):
            if not lines[j].strip().startswith("#"):
                break
            above.append(lines[j])
        if not any(c.strip().startswith("# --") for c in above):
            undocumented.append(".".join([*ancestors, key]))
    assert undocumented == []
