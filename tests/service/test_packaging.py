"""Static checks of the Docker and monitoring files: there is no Docker engine on CI, so this is
what can be verified without one (plus promtool on the Prometheus config and alert rules)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "gatehouse.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


def torch_pin() -> str:
    # A regex, not tomllib: the project still supports Python 3.10.
    (pin,) = re.findall(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    return pin


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    hit = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path.split("/")[0], pat):
            hit = not negate
    return hit


def bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for vol in service.get("volumes", []):
        src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
        if src.startswith((".", "/")):
            sources.append(src)
    return sources


def test_compose_services_and_every_mounted_file_exists() -> None:
    doc = compose()
    # `docker compose up` starts these; the scale profile's services only when asked for.
    default = {n for n, svc in doc["services"].items() if not svc.get("profiles")}
    assert default == {"gatehouse", "prometheus", "grafana"}
    named = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in named, f"{name} uses undeclared volume {src}"
    assert doc["services"]["gatehouse"]["build"]["context"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_compose_passes_the_api_key_and_listens_on_all_interfaces() -> None:
    env = compose()["services"]["gatehouse"]["environment"]
    assert env["GATEHOUSE_HOST"] == "0.0.0.0"
    # Required from the caller's environment, never written into the file.
    assert re.fullmatch(r"\$\{GATEHOUSE_API_KEY:\?[^}]+\}", env["GATEHOUSE_API_KEY"])
    model_dir = env["GATEHOUSE_MODEL_DIR"]
    mounts = compose()["services"]["gatehouse"]["volumes"]
    assert any(m.split(":")[1] == model_dir for m in mounts), "model store is not a volume"


def test_grafana_is_provisioned_with_anonymous_read_only_viewers() -> None:
    graf = compose()["services"]["grafana"]
    env = graf["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in graf["volumes"]}
    prov_dir = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(prov_dir / "datasources" / "prometheus.yml")["datasources"]
    (ds,) = datasources
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(prov_dir / "dashboards" / "gatehouse.yml")["providers"]
    dash_dir = ROOT / mounts[provider["options"]["path"]]
    assert (dash_dir / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name
    # Every panel and variable queries through the dashboard's datasource variable, which
    # defaults to Grafana's default datasource: the provisioned one.
    assert ds["isDefault"] is True
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"}
    uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
    uids |= {v["datasource"]["uid"] for v in dash["templating"]["list"] if "datasource" in v}
    assert uids == {"${datasource}"}


def test_dashboard_panels_are_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("request rate", "latency", "error", "queue", "batch", "sessions", "loss",
                  "perplexity", "cuda"):  # fmt: skip
        assert topic in titles, f"no panel about {topic}"
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24


def test_gpu_override_reserves_gpus_and_builds_the_cuda_image() -> None:
    doc = load_yaml(ROOT / "docker-compose.gpu.yml")
    svc = doc["services"]["gatehouse"]
    assert svc["build"]["args"]["VARIANT"] == "cuda"
    assert svc["environment"]["GATEHOUSE_DEVICE"] == "cuda"
    (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert set(doc["services"]) <= set(compose()["services"])
    for src in bind_sources(svc):
        assert (ROOT / src).exists()


def test_dockerfile_copy_sources_exist_and_reach_the_build_context() -> None:
    patterns = dockerignore_patterns()
    copies = [args for ins, args in dockerfile_instructions() if ins == "COPY"]
    local = [a for a in copies if "--from=" not in a]
    assert local, "no COPY from the build context"
    for args in local:
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} missing"
            assert not ignored(src.removeprefix("./"), patterns), f"{src} is in .dockerignore"
    # Nothing secret or heavy in the context.
    for path in (".git", ".venv", "tests", "store"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_dockerfile_structure() -> None:
    ins = dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in ins if i == "ARG" and "=" in a}
    assert args["VARIANT"] == "cpu"
    assert args["CUDA_BASE"].startswith("pytorch/pytorch:" + torch_pin() + "-cuda")
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 3 and "base-${VARIANT}" in " ".join(froms)
    runs = [a for i, a in ins if i == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if f"pip install torch=={torch_pin()}" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any("/healthz" in a for i, a in ins if i == "HEALTHCHECK")
    volumes = " ".join(a for i, a in ins if i == "VOLUME")
    env = " ".join(a for i, a in ins if i == "ENV")
    store = re.search(r"GATEHOUSE_MODEL_DIR=(\S+)", env)
    assert store and store.group(1) in volumes
    assert [a for i, a in ins if i == "CMD"][-1] == '["python", "-m", "service"]'


def test_image_installs_as_the_readme_does() -> None:
    """The README installs through `make install` (or spells out the pip commands); either way
    it is torch at the pinned version first, then the project, as in the image."""
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pin = torch_pin()
    spelled_out = f"pip install torch=={pin}" in readme
    assert spelled_out or re.search(r"\bmake (serve|install)\b", readme)
    steps = re.findall(r"pip install (?:-q )?(torch==\S+|-e \S+|\.)", makefile)
    # Serving installs torch, then the project alone; the test extras are a later, separate step.
    assert steps[:2] == [f"torch=={pin}", "-e ."] and steps[2:] == ["-e '.[test]'"], steps


def test_prometheus_config_targets_the_compose_service() -> None:
    cfg = load_yaml(DOCKER / "prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = jobs["gatehouse"]["static_configs"][0]["targets"]
    port = compose()["services"]["gatehouse"]["environment"]["GATEHOUSE_PORT"]
    assert targets == [f"gatehouse:{port}"]
    assert jobs["gatehouse"].get("metrics_path", "/metrics") == "/metrics"
    mounts = compose()["services"]["prometheus"]["volumes"]
    for rule_file in cfg["rule_files"]:
        assert any(m.split(":")[1] == f"/etc/prometheus/{rule_file}" for m in mounts)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: `make system-deps` installs it"
    return path


@pytest.mark.parametrize(("what", "file"), [("config", "prometheus.yml"), ("rules", "alerts.yml")])
def test_promtool_accepts_config_and_rules(promtool: str, what: str, file: str) -> None:
    proc = subprocess.run(
        [promtool, "check", what, str(DOCKER / file)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
