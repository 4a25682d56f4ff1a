"""Deployment: every overlay renders, validates offline, and has the properties we promise."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamer.config import load_settings

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["gpu", "cpu-dev", "multi-gpu", "gpu-local-volume"]
STACK = K8S / "components" / "kube-prometheus-stack"
SCHEMAS = ROOT / "tests" / "schemas"  # prometheus-operator's CRDs, vendored (see their header)
CRDS = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")


def render(overlay: str, k8s: Path = K8S) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(k8s / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_with_stack(overlay: str, tmp_path: Path, k8s: Path = K8S) -> list[dict]:
    """The overlay with the kube-prometheus-stack component, as a user's overlay adds it."""
    (tmp_path / "overlays" / "with-stack").mkdir(parents=True)
    here = tmp_path / "overlays" / "with-stack"
    (here / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(k8s / "overlays" / overlay, here)],
        "components": [os.path.relpath(k8s / "components" / "kube-prometheus-stack", here)],
    }))  # fmt: skip
    return render("with-stack", tmp_path)


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def _closed(schema: object) -> object:
    """The schema with unknown fields refused, as the API server's strict field validation
    (kubectl's default) does; objects that preserve unknown fields stay open."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) for k, v in schema.items()}
    open_ = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_:
        closed["additionalProperties"] = False
    return closed


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    """openAPIV3Schema of the CRD's v1 (its CEL x-kubernetes-validations are not run)."""
    crd = yaml.safe_load((SCHEMAS / f"monitoring.coreos.com_{CRDS[kind]}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft4Validator(_closed(version["schema"]["openAPIV3Schema"]))


def validate(doc: dict) -> None:
    if doc["kind"] in CRDS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        crd_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


@needs_kubectl
@pytest.mark.parametrize("stack", [False, True], ids=["plain", "kube-prometheus-stack"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_and_validate_strictly_against_kubernetes_and_operator_schemas(
    overlay, stack, tmp_path
):
    docs = render_with_stack(overlay, tmp_path) if stack else render(overlay)
    assert {"PodMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}
    for doc in docs:
        validate(doc)


def test_the_operator_schemas_refuse_a_misspelt_field():
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
               "metadata": {"name": "m"},
               "spec": {"selector": {}, "podMetricEndpoints": [{"port": "metrics"}]}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError, match="podMetricEndpoints"):
        validate(monitor)
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)  # a rule needs an expr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_stack_component_labels_only_what_kube_prometheus_stack_selects(overlay, tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / "k8s" / "components" / "kube-prometheus-stack" / "release.env").write_text(
        "RELEASE=monitoring\n"
    )
    plain = render(overlay)
    docs = render_with_stack(overlay, tmp_path, tmp_path / "k8s")
    for kind in CRDS:
        assert find(docs, kind, "streamer")["metadata"]["labels"]["release"] == "monitoring"
        assert "release" not in find(plain, kind, "streamer")["metadata"]["labels"]
        find(docs, kind, "streamer")["metadata"]["labels"].pop("release")
    assert docs == plain  # nothing else changes, and the release setting is not applied


def test_the_stack_component_defaults_to_the_charts_usual_release_name():
    env = (STACK / "release.env").read_text()
    values = dict(line.split("=", 1) for line in env.splitlines() if line and line[0] != "#")
    assert values == {"RELEASE": "kube-prometheus-stack"}


@needs_kubectl
@pytest.mark.parametrize("overlay", ["gpu", "cpu-dev"])
def test_the_learner_deployment_has_the_promised_shape(overlay):
    docs = render(overlay)
    deployment = find(docs, "Deployment", "streamer")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() & resources["limits"].keys()
    gpu = resources["limits"].get("nvidia.com/gpu")
    assert (gpu == 1) if overlay == "gpu" else gpu is None
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8439}
    restart = find(docs, "ConfigMap", "streamer-restart")
    grace = float(restart["data"]["STREAMER_DAEMON__GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 15  # room to checkpoint
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == [
        "ALL"
    ]
    assert security["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["config"]  # a directory mount: ConfigMap updates arrive
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "streamer-config"  # no hash suffix
    assert restart["metadata"]["name"] != "streamer-restart"  # hashed: a change rolls pods
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "streamer-checkpoints"
    pvc = find(docs, "PersistentVolumeClaim", "streamer-checkpoints")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert find(docs, "PodDisruptionBudget", "streamer")["spec"]["maxUnavailable"] == 1
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "streamer" and "app.kubernetes.io/part-of" in labels


@needs_kubectl
def test_the_multi_gpu_statefulset_agrees_with_its_torchrun_and_monitoring():
    docs = render("multi-gpu")
    assert not [d for d in docs if d["kind"] == "Deployment"]  # replaced, not added to
    sts = find(docs, "StatefulSet", "streamer-workers")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(args["nnodes"]) == sts["spec"]["replicas"]
    assert int(args["nproc-per-node"]) == gpus
    assert container["command"] == ["torchrun"] and container["args"][-2:] == ["streamer", "run"]
    host = args["rdzv-endpoint"].split(":")[0]
    assert host == f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}"
    headless = find(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert pod["affinity"]["podAntiAffinity"]  # one pod per node
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [ports[f"metrics-{r}"] for r in range(gpus)] == [8439 + r for r in range(gpus)]
    monitor = find(docs, "PodMonitor", "streamer")["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in monitor] == [f"metrics-{r}" for r in range(gpus)]
    grace = float(find(docs, "ConfigMap", "streamer-restart")["data"][
        "STREAMER_DAEMON__GRACE_SECONDS"])  # fmt: skip
    assert pod["terminationGracePeriodSeconds"] > int(args["shutdown-timeout"]) > grace
    pvc = find(docs, "PersistentVolumeClaim", "streamer-checkpoints")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # rank 0 may start on any pod


@needs_kubectl
def test_monitoring_objects_carry_the_files_the_monitoring_tests_check():
    docs = render("gpu")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert find(docs, "PrometheusRule", "streamer")["spec"]["groups"] == rules["groups"]
    dashboard = find(docs, "ConfigMap", "streamer-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["streamer.json"]) == json.loads(
        (ROOT / "deploy" / "grafana" / "streamer.json").read_text()
    )
    monitor = find(docs, "PodMonitor", "streamer")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


@needs_kubectl
def test_one_line_of_monitoring_env_moves_every_runbook_url(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s")
    base = "https://wiki.example.org/streamer/runbooks"
    (tmp_path / "k8s" / "base" / "monitoring.env").write_text(f"RUNBOOK_BASE_URL={base}\n")
    docs = render("gpu", tmp_path / "k8s")
    rules = find(docs, "PrometheusRule", "streamer")["spec"]["groups"]
    alerts = [r for g in rules for r in g["rules"] if "alert" in r]
    assert alerts and all(
        r["annotations"]["runbook_url"] == f"{base}#{r['alert'].lower()}" for r in alerts
    )
    assert not [d for d in docs if d["metadata"]["name"] == "streamer-monitoring-settings"]


def test_generated_wrappers_are_up_to_date():
    sys.path.insert(0, str(K8S))
    import generate

    assert (K8S / "base" / "prometheusrule.yaml").read_text() == generate.prometheus_rule()
    assert (K8S / "base" / "grafana-dashboard.yaml").read_text() == generate.dashboard_configmap()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shipped_settings_are_a_valid_config(overlay, monkeypatch):
    env = dict(line.split("=", 1) for line in (K8S / "base" / "restart.env").read_text().split())
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    for generator in kustomization.get("configMapGenerator", []):
        env |= dict(v.split("=", 1) for v in generator["literals"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(K8S / "base" / "config" / "config.yaml")
    assert settings.kafka.topic == "image-text-pairs"
    assert settings.model.arch == ("streamer-demo" if overlay == "cpu-dev" else "ViT-B-32")
    assert settings.distributed.backend == ("nccl" if overlay == "multi-gpu" else "auto")


@needs_kubectl
@pytest.mark.parametrize("overlay", ["gpu", "gpu-local-volume"])
def test_the_gpu_overlays_publish_with_credentials_only_from_a_secret(overlay, monkeypatch):
    docs = render(overlay)
    restart = find(docs, "ConfigMap", "streamer-restart")["data"]
    container = find(docs, "Deployment", "streamer")["spec"]["template"]["spec"]["containers"][0]
    for key, value in restart.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(K8S / "base" / "config" / "config.yaml")
    assert settings.publish.enabled and settings.publish.format == "merged"
    assert settings.checkpoint.keep_published
    everything = json.dumps([d for d in docs if d["kind"] in ("ConfigMap", "Deployment")])
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\W*[:=]\W*\w", everything)  # no secret values
    assert "secret" not in json.dumps(settings.publish.model_dump()).lower()
    secrets = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    if overlay == "gpu":  # an object store; the keys come from the Secret, as environment
        assert settings.publish.url.startswith("s3://")
        assert "streamer-publish-credentials" in secrets
        assert settings.publish.auto_rollback.enabled
    else:  # a volume of its own that serving pods can mount too
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[settings.publish.url] == "published"
        pvc = find(docs, "PersistentVolumeClaim", "streamer-published")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert "streamer-publish-credentials" not in secrets


@needs_kubectl
@pytest.mark.parametrize("overlay", ["gpu", "cpu-dev"])
def test_the_metrics_port_is_one_number_from_the_env_to_the_service(overlay):
    docs = render(overlay)
    container = find(docs, "Deployment", "streamer")["spec"]["template"]["spec"]["containers"][0]
    env = find(docs, "ConfigMap", "streamer-restart")["data"]
    port = int(env["STREAMER_METRICS__PORT"])
    assert port == 8439  # 9100 is node_exporter's
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"] == [port]
    service = find(docs, "Service", "streamer-metrics")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service] == [(port, "metrics")]


def test_the_image_exposes_and_health_checks_the_daemons_default_port():
    from streamer.config import MetricsConfig

    # The image runs without restart.env, so its HEALTHCHECK relies on the daemon's default.
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = re.findall(r"^EXPOSE (\d+)$", dockerfile, re.M)
    checked = re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", dockerfile)
    assert exposed == checked == [str(MetricsConfig().port)] == ["8439"]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "", run.stdout + run.stderr


def _learner_pod(docs: list[dict]) -> dict:
    workload = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                    and d["metadata"]["name"].startswith("streamer")
                    and d["spec"]["template"]["metadata"]["labels"].get(
                        "app.kubernetes.io/component") == "learner")  # fmt: skip
    return workload["spec"]["template"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_learner_runs_as_its_own_service_account_with_no_token_mounted(overlay):
    docs = render(overlay)
    pod = _learner_pod(docs)["spec"]
    account = find(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["name"] == "streamer"
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False  # whatever the account says later
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRoleBinding")]


def _ports(rule: dict) -> set[tuple[int | str, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_lets_in_only_scrapes_and_out_only_dns_brokers_and_the_store(
    overlay, monkeypatch
):
    docs = render(overlay)
    template, policy = _learner_pod(docs), find(docs, "NetworkPolicy", "streamer")["spec"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()  # it applies to the pod
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}  # both default to deny
    container = template["spec"]["containers"][0]
    metrics = sorted(p["containerPort"] for p in container["ports"] if "metrics" in p["name"])
    scrape = policy["ingress"][0]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]  # fmt: skip
    (port,) = scrape["ports"]
    if overlay == "multi-gpu":  # every rank's port; and the ranks reach one another
        assert (port["port"], port["endPort"]) == (metrics[0], metrics[-1])
        peers = {"podSelector": {"matchLabels": selector}}
        assert policy["ingress"][1] == {"from": [peers]} and {"to": [peers]} in policy["egress"]
    else:
        assert port["port"] == "metrics" and len(policy["ingress"]) == 1
    allowed = set().union(*(_ports(r) for r in policy["egress"] if "to" not in r))
    env = find(docs, "ConfigMap", "streamer-restart")["data"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(K8S / "base" / "config" / "config.yaml")
    brokers = {int(b.rsplit(":", 1)[1]) for b in settings.kafka.bootstrap_servers}
    assert {(53, "UDP"), (53, "TCP")} | {(p, "TCP") for p in brokers} <= allowed
    if settings.publish.enabled and "://" in settings.publish.url:
        assert (443, "TCP") in allowed  # an object store, over HTTPS


MODEL_CACHE = K8S / "components" / "model-cache"


def render_with(component: Path, overlay: str, tmp_path: Path) -> list[dict]:
    here = tmp_path / "overlays" / "with"
    here.mkdir(parents=True)
    (here / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, here)],
        "components": [os.path.relpath(component, here)],
    }))  # fmt: skip
    return render("with", tmp_path)


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["gpu", "gpu-local-volume"])
def test_the_model_cache_component_keeps_the_weights_on_a_claim_and_starts_offline(
    overlay, tmp_path
):
    import open_clip

    docs = render_with(MODEL_CACHE, overlay, tmp_path)
    for doc in docs:
        validate(doc)
    pod = find(docs, "Deployment", "streamer")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = {"claimName": "streamer-models"}
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": claim}
    assert find(docs, "PersistentVolumeClaim", "streamer-models")["spec"]["accessModes"] == [
        "ReadWriteOnce"]  # fmt: skip
    (init,), (main,) = pod["initContainers"], pod["containers"]
    assert init["image"] == main["image"]  # the same locked image brings `hf`
    mount = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}["cache"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["cache"] == mount
    source = find(docs, "ConfigMap", "streamer-model-source")["data"]
    assert [e["configMapRef"]["name"] for e in init["envFrom"]] == [
        find(docs, "ConfigMap", "streamer-model-source")["metadata"]["name"]]  # fmt: skip
    restart = find(docs, "ConfigMap", "streamer-restart")["data"]
    assert restart["STREAMER_MODEL__PRETRAINED"] == f"{source['MODEL_DIR']}/{source['MODEL_FILE']}"
    assert source["MODEL_DIR"].startswith(mount + "/") and restart["HF_HUB_OFFLINE"] == "1"
    # the repository is the one open_clip itself would fetch for the base's arch and tag
    base = _env_file(K8S / "base" / "restart.env")
    hub = open_clip.get_pretrained_cfg(restart["STREAMER_MODEL__ARCH"],
                                       base["STREAMER_MODEL__PRETRAINED"])["hf_hub"]  # fmt: skip
    assert hub.rstrip("/") == source["MODEL_REPO"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_fetch_step_downloads_once_and_then_leaves_the_cache_alone(tmp_path):
    """The init container's shell step, run here with a stand-in `hf` that records its call."""
    component = yaml.safe_load((MODEL_CACHE / "kustomization.yaml").read_text())
    patch = yaml.safe_load(component["patches"][0]["patch"])
    (init,) = patch["spec"]["template"]["spec"]["initContainers"]
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "hf").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nmkdir -p "$5"\n'
                                f'echo weights > "$5/$3"\n')  # fmt: skip
    (bin_dir / "hf").chmod(0o755)
    env = {**_env_file(MODEL_CACHE / "model.env"), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env["MODEL_DIR"] = str(tmp_path / "models" / "vit")
    for _ in range(2):
        run = subprocess.run([*init["command"], *init["args"]], env=env, capture_output=True,
                             text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert calls.read_text().splitlines() == [
        f"download {env['MODEL_REPO']} {env['MODEL_FILE']} --local-dir {env['MODEL_DIR']}"
    ]
    assert "is there" in run.stdout


# -- the image: built from hash-checked locks --------------------------------------------
DEMO_ONLY = {"scikit-learn", "matplotlib", "scikit-image", "pytest", "hypothesis", "ruff"}
# Pinned differently on purpose: in the image only botocore (s3fs) needs it, in
# requirements.lock only matplotlib (demo); neither resolution allows the other's version.
MAY_DIFFER = {"python-dateutil"}


def _lock(name: str) -> dict[str, str]:
    """{package: version} of a uv lock; fails if any requirement has no hash."""
    text = (ROOT / name).read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
    pins = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", entry)
        assert match and "--hash=sha256:" in entry, entry[:200]
        pins[match[1].lower()] = match[2]
    return pins


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_the_image_installs_only_from_hash_checked_locks_on_a_base_pinned_by_digest():
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(bases) == 2 and len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases[0])
    installs = re.findall(r"pip install ([^&\n]+)", dockerfile)
    locks = re.findall(r"--require-hashes -r (\S+)", dockerfile)
    assert [Path(p).name for p in locks] == ["requirements-build.lock", "requirements-image.lock"]
    assert all("--require-hashes -r" in i or "--no-deps /wheels/" in i for i in installs), installs
    assert (
        "--no-build-isolation" in re.search(r"pip wheel .*", dockerfile)[0]
    )  # no unpinned backend
    for lock in locks:
        assert _lock(Path(lock).name)  # every requirement pinned, with its hashes


def test_the_image_lock_is_the_tested_lock_without_the_demo_and_states_its_cuda_build():
    image, tested, build = _lock("requirements-image.lock"), _lock("requirements.lock"), _lock(
        "requirements-build.lock")  # fmt: skip
    assert not DEMO_ONLY & image.keys()
    differ = {n for n in image.keys() & tested.keys() if image[n] != tested[n]}
    assert differ <= MAY_DIFFER, {n: (image[n], tested[n]) for n in differ}
    assert all(tested[n] == v for n, v in build.items())  # the backend the editable install uses
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = [*project["dependencies"], *extras["s3"], *extras["gcs"], *extras["broker"]]
    assert _requirement_names(runtime) <= image.keys()
    assert _requirement_names(extras["demo"]) <= DEMO_ONLY
    labels = dict(
        re.findall(r'dev\.streamer\.([\w-]+)="([^"]+)"', (ROOT / "Dockerfile").read_text())
    )
    assert labels["torch"] == image["torch"] == tested["torch"]
    cuda = image["nvidia-cuda-runtime"].split(".")
    assert labels["cuda"] == f"{cuda[0]}.{cuda[1]}" and int(labels["min-nvidia-driver"]) >= 580


def test_the_product_imports_with_the_demo_packages_absent():
    """What the image runs (every module but streamer.dev) loads without the demo extra:
    imported in a process where scikit-learn, matplotlib and scikit-image cannot be found
    (river tries scikit-learn and goes on without it)."""
    code = textwrap.dedent("""
        import importlib, importlib.machinery, pkgutil, sys
        class Absent:  # importing one fails as if it were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"sklearn", "matplotlib", "skimage"}:
                    return importlib.machinery.ModuleSpec(name, self)
            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
            def exec_module(self, module):
                pass
        sys.meta_path.insert(0, Absent())
        import streamer
        for mod in pkgutil.walk_packages(streamer.__path__, "streamer."):
            if not mod.name.startswith("streamer.dev") and not mod.name.endswith("__main__"):
                importlib.import_module(mod.name)
        print("imported")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "imported"
