"""The deployment files, checked offline: the Kubernetes manifests against the API schemas
(kubernetes-validate), the compose scale profile by parsing, its nginx config with `nginx -t`
and its Prometheus config with promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "docker"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
CRD_KINDS = {"InferenceService"}  # KServe's: no schema in kubernetes-validate


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]["containers"]
    return doc["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize(("path", "doc"), manifests(), ids=lambda v: getattr(v, "name", ""))
def test_manifest_is_valid_kubernetes(path: Path, doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        # The pod part of the custom resource is a plain pod spec: checked as one.
        predictor = doc["spec"]["predictor"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": doc["metadata"]["name"]},
            "spec": {"containers": predictor["containers"], "volumes": predictor["volumes"]},
        }
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_the_plain_manifests() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).is_file() for name in listed)
    apart = {"deployment-gpu.yaml", "kserve-inferenceservice.yaml"}  # applied on their own
    assert set(listed) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} - apart


def test_server_pods_probe_health_and_ask_for_resources() -> None:
    servers = [d for d in by_kind("Deployment") if d["metadata"]["name"] != "gatehouse-worker"]
    assert {d["metadata"]["name"] for d in servers} == {"gatehouse", "gatehouse-gpu"}
    for doc in servers:
        (c,) = containers(doc)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    (gpu,) = [d for d in servers if d["metadata"]["name"] == "gatehouse-gpu"]
    (c,) = containers(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GATEHOUSE_DEVICE"] == "cuda" and int(env["GATEHOUSE_WORKERS"]) > 1


def test_every_environment_variable_is_a_setting() -> None:
    # The store settings may be declared by modules of other branches: known names only.
    known = {env_name(f) for f in Settings.model_fields}
    known |= {"GATEHOUSE_SESSION_STORE", "GATEHOUSE_JOB_STORE"}
    for _, doc in manifests():
        for c in containers(doc) if _kind_has_pods(doc) else []:
            for var in c.get("env", []):
                if var["name"].startswith("GATEHOUSE_"):
                    assert var["name"] in known, var["name"]


def _kind_has_pods(doc: dict[str, Any]) -> bool:
    return doc["kind"] in {"Deployment", "Job", "InferenceService"}


def test_pods_share_the_read_write_many_store_and_the_service_selects_the_servers() -> None:
    (pvc,) = by_kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for _, doc in manifests():
        if not _kind_has_pods(doc):
            continue
        spec = doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else None
        spec = spec or doc["spec"]["template"]["spec"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [pvc["metadata"]["name"]], doc["metadata"]["name"]
        for c in containers(doc):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert env["GATEHOUSE_MODEL_DIR"] in mounts
    (svc,) = by_kind("Service")
    (server,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "gatehouse"]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gatehouse"
    (worker,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "gatehouse-worker"]
    assert containers(worker)[0]["command"] == ["gatehouse", "worker"]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_scale_profile() -> None:
    services = compose()["services"]
    scale = {n for n, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"redis", "postgres", "replica", "worker", "lb", "prometheus-scale"}
    replica = services["replica"]
    env = replica["environment"]
    assert env["GATEHOUSE_SESSION_STORE"].startswith("redis://redis:")
    assert (
        env["GATEHOUSE_JOB_STORE"].startswith("postgresql://")
        and "@postgres:" in env["GATEHOUSE_JOB_STORE"]
    )
    assert replica["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == ["gatehouse", "worker"]
    assert services["worker"]["environment"] == env  # the same YAML anchor
    named = set(compose()["volumes"])
    for name in scale:
        for dep in services[name].get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in services[name].get("volumes", []):
            src = vol.split(":")[0]
            assert (ROOT / src).exists() if src.startswith(".") else src in named, vol


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed")
def test_nginx_accepts_the_scale_config(tmp_path: Path) -> None:
    # `replica` resolves only on the compose network: the loopback stands in for it.
    conf = (DOCKER / "nginx.conf").read_text().replace("server replica:", "server 127.0.0.1:")
    (tmp_path / "nginx.conf").write_text(conf.replace("/tmp/", f"{tmp_path}/"))
    proc = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    mounts = compose()["services"]["lb"]["volumes"]
    assert "./docker/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts


def test_prometheus_scrapes_every_replica() -> None:
    cfg = yaml.safe_load((DOCKER / "prometheus-scale.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    (sd,) = jobs["gatehouse"]["dns_sd_configs"]
    assert sd["names"] == ["replica"] and sd["port"] == 8000
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    proc = subprocess.run(
        [promtool, "check", "config", str(DOCKER / "prometheus-scale.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
