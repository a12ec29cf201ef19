"""deploy/kubernetes/, checked offline: no cluster runs here or in CI.

The manifests are validated against the Kubernetes schemas that
kubernetes-validate bundles, and the ScaledObject against KEDA's schema kept in
deploy/kubernetes/schemas/. Then what the pods would run is run for real on
loopback: the broker and a worker with the pods' environment and the key files
the documented commands make, their probes, the metric the ScaledObject's
query reads, and a scale-down by SIGTERM.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

import zeropool
from zeropool.broker.__main__ import is_loopback
from zeropool.broker.state import BrokerState
from zeropool.broker.stats import slots
from tests import helpers
from tests.conftest import command as program_command, descendants
from tests.helpers import wait_until
from tests.test_compose import dockerfile_instructions, final_stage, read_by, scripts
from tests.test_faults import count_completions

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = DEPLOY / "schemas" / "keda.sh_scaledobjects_v1alpha1.yaml"
# Not in the kustomization on purpose: a load balancer is opted into.
OPTIONAL = {"broker-external.yaml"}
# The oldest Kubernetes these manifests are written for, and the newest whose
# schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# A broker here notices a killed worker within about a second.
FAST = ("--heartbeat-interval", "0.2", "--liveness", "5", "--log-level", "WARNING")
# The package whose code reads a pod's environment, by its container's program.
PACKAGE_OF_PROGRAM = {"broker": "broker", "worker": "worker"}

pytestmark = pytest.mark.timeout(60)


# -- reading the manifests ---------------------------------------------------------------------

def load_documents(name: str) -> list[dict]:
    with open(DEPLOY / name) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def kustomization() -> dict:
    return load_documents("kustomization.yaml")[0]


def manifests() -> list[dict]:
    """Every object the kustomization and the optional files hold."""
    return [doc for name in [*kustomization()["resources"], *sorted(OPTIONAL)]
            for doc in load_documents(name)]


def find(kind: str, name: str) -> dict:
    found = [doc for doc in manifests()
             if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def deployment_of(program: str) -> dict:
    """The Deployment whose container runs ``program``."""
    found = [doc for doc in manifests() if doc["kind"] == "Deployment"
             and container(doc)["command"][0] == program]
    assert len(found) == 1, f"{len(found)} Deployments run {program}"
    return found[0]


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def environment(deployment: dict) -> dict[str, str]:
    env = container(deployment).get("env", [])
    assert all("value" in item for item in env), "only literal values are checked here"
    return {item["name"]: item["value"] for item in env}


def container_port(deployment: dict, name: str) -> int:
    return next(p["containerPort"] for p in container(deployment)["ports"] if p["name"] == name)


def scaled_object() -> dict:
    found = [doc for doc in manifests() if doc["kind"] == "ScaledObject"]
    assert len(found) == 1
    return found[0]


def trigger() -> dict:
    triggers = scaled_object()["spec"]["triggers"]
    assert len(triggers) == 1
    return triggers[0]


def query_metrics() -> set[str]:
    """The zeropool metric names the ScaledObject's query reads."""
    names = set(re.findall(r"\b(zeropool_\w+)", trigger()["metadata"]["query"]))
    assert names, "the query reads no zeropool metric"
    return names


def slots_per_pod() -> int:
    env = environment(deployment_of("worker"))
    return int(env["ZEROPOOL_THREADS"]) * int(env.get("ZEROPOOL_PROCESSES", "1"))


def desired_workers(scraped: dict[str, float]) -> int:
    """What KEDA's autoscaler asks for, fed with what the broker serves: an
    AverageValue target asks for ceil(value / threshold), within the bounds.
    The query is one aggregation over one series, as the broker serves one."""
    spec = scaled_object()["spec"]
    assert trigger()["metricType"] == "AverageValue"
    (name,) = query_metrics()
    wanted = math.ceil(scraped[name] / float(trigger()["metadata"]["threshold"]))
    return min(max(wanted, spec["minReplicaCount"]), spec["maxReplicaCount"])


def documented_commands() -> list[list[str]]:
    """The shell commands that kustomization.yaml's comments tell users to run."""
    found = []
    for line in (DEPLOY / "kustomization.yaml").read_text().splitlines():
        text = line.lstrip("# ").strip()
        if text.startswith(("broker ", "kubectl ")):
            found.append(shlex.split(text))
    return found


def documented_secrets() -> dict[str, dict[str, str]]:
    """Secret name -> {key: file} from the documented `kubectl create secret` lines."""
    secrets = {}
    for words in documented_commands():
        if words[0] == "kubectl" and "secret" in words and "generic" in words:
            name = words[words.index("generic") + 1]
            files = [w.split("=", 1)[1] for w in words if w.startswith("--from-file=")]
            secrets[name] = {os.path.basename(f): f for f in files}
    assert secrets, "kustomization.yaml shows no `kubectl create secret generic`"
    return secrets


def mounted_files(deployment: dict) -> dict[str, tuple[str, str, str]]:
    """Each file the pod's volumes put in its container: path -> (kind, source, key)."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    secrets = documented_secrets()
    files = {}
    for mount in container(deployment).get("volumeMounts", []):
        assert "subPath" not in mount, "a subPath mount is never updated in place"
        volume = volumes[mount["name"]]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets, f"no documented command makes Secret {name}"
            keys = {item["key"]: item["path"] for item in volume["secret"].get("items", [])} \
                or {key: key for key in secrets[name]}
            for key, path in keys.items():
                files[str(PurePosixPath(mount["mountPath"], path))] = ("secret", name, key)
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            for key in find("ConfigMap", name)["data"]:
                files[str(PurePosixPath(mount["mountPath"], key))] = ("configMap", name, key)
    return files


# -- the pods, rehearsed on this host ----------------------------------------------------------

class Pod:
    """A Deployment's container as processes here: its files under ``root``,
    its environment with paths moved there and addresses moved to loopback."""

    def __init__(self, deployment: dict, root: Path, keys: Path) -> None:
        self.deployment = deployment
        self.root = root
        secrets = documented_secrets()
        for path, (kind, source, key) in mounted_files(deployment).items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "secret":
                target.write_bytes((keys / secrets[source][key]).read_bytes())
            else:
                target.write_text(find("ConfigMap", source)["data"][key])

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPOOL_")}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        for name, value in environment(self.deployment).items():
            env[name] = self.path(value)
        env.update(overrides)
        return env

    def path(self, value: str) -> str:
        for mount in container(self.deployment).get("volumeMounts", []):
            if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
                return str(self.root / value.lstrip("/"))
        return value

    def probe(self, which: str, address: str, **env: str) -> subprocess.CompletedProcess:
        """Run the container's ``which`` probe (readinessProbe, livenessProbe)."""
        argv = []
        for word in container(self.deployment)[which]["exec"]["command"]:
            if word.startswith("tcp://"):
                word = address
            argv.append(self.path(word))
        program, *args = argv
        argv = [sys.executable, *args] if program == "python" else [*program_command(program),
                                                                     *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              env=self.env(**env))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("zeropool_"))}


def metric_types(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


@pytest.fixture
def keys(tmp_path) -> Path:
    """Key files made by the documented `broker keygen` command, run here."""
    (keygen,) = [words for words in documented_commands() if words[:2] == ["broker", "keygen"]]
    subprocess.run([*program_command("broker"), *keygen[1:]], cwd=tmp_path, check=True,
                   capture_output=True, timeout=30)
    return tmp_path


def worker_pod_env(address: str, **overrides: str) -> dict[str, str]:
    """A worker pod's environment without keys, against a loopback broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPOOL_")}
    for name, value in environment(deployment_of("worker")).items():
        if not name.startswith("ZEROPOOL_CURVE_"):
            env[name] = value
    env.update(ZEROPOOL_ADDRESS=address, ZEROPOOL_PATH=str(ROOT), **overrides)
    return env


# -- the files ---------------------------------------------------------------------------------

def test_every_manifest_parses_and_the_kustomization_lists_them():
    listed = kustomization()["resources"]
    present = {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == present - OPTIONAL, "a manifest the kustomization does not apply"
    assert OPTIONAL <= present
    namespace = kustomization()["namespace"]
    for doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            # Also there, so that `kubectl apply -f FILE` lands in the same place.
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_manifests_as_they_are():
    built = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True,
                           text=True, timeout=30)
    assert built.returncode == 0, built.stderr
    applied = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout)}
    listed = {(d["kind"], d["metadata"]["name"]): d
              for name in kustomization()["resources"] for d in load_documents(name)}
    # Only images may change (`kustomize edit set image`): to the registry's name.
    for key, doc in listed.items():
        if doc["kind"] == "Deployment":
            box = container(applied[key])
            assert box["image"].split("/")[-1].split(":")[0] == "zeropool"
            box["image"] = container(doc)["image"]
    assert applied == listed


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_validate_against_the_kubernetes_schemas(version):
    checked = set()
    for doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Namespace", "Deployment", "Service", "ConfigMap"} <= checked


def strict(schema: object) -> object:
    """The schema as the API server applies it with kubectl's default strict
    field validation: an object's unlisted fields are errors, not pruned."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def keda_validator() -> jsonschema.Validator:
    with open(KEDA_SCHEMA) as f:
        schema = strict(yaml.safe_load(f))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_scaledobject_validates_against_kedas_schema():
    validator = keda_validator()
    so = scaled_object()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    validator.validate(so)
    # The schema has teeth: what KEDA would refuse, it refuses.
    misspelt = copy.deepcopy(so)
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    unquoted = copy.deepcopy(so)
    unquoted["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    untargeted = copy.deepcopy(so)
    del untargeted["spec"]["scaleTargetRef"]["name"]
    for bad in (misspelt, unquoted, untargeted):
        assert not validator.is_valid(bad)


def test_the_scaledobject_scales_the_worker_deployment_on_the_brokers_demand():
    spec = scaled_object()["spec"]
    worker = deployment_of("worker")
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment",
                                                                   worker["metadata"]["name"])
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    assert trigger()["type"] == "prometheus"
    assert query_metrics() == {"zeropool_demand_slots"}
    # The metric's namespace label is the one its pods run in.
    assert f'namespace="{kustomization()["namespace"]}"' in trigger()["metadata"]["query"]
    # Demand is in slots: one threshold is one pod's worth, so every task gets a slot.
    assert float(trigger()["metadata"]["threshold"]) == slots_per_pod()
    served = set(re.findall(r'"(zeropool_\w+)"', (ROOT / "broker" / "metrics.py").read_text()))
    assert query_metrics() <= served


def test_the_broker_listens_beyond_loopback_only_with_keys():
    broker = deployment_of("broker")
    env = environment(broker)
    assert not is_loopback(env["ZEROPOOL_BIND"]), "workers in other pods could not reach it"
    assert {"ZEROPOOL_CURVE_SECRET_KEY", "ZEROPOOL_AUTHORIZED_KEYS"} <= set(env)
    assert env.get("ZEROPOOL_INSECURE", "0").lower() in ("0", "", "false", "no", "off")
    assert "--insecure" not in container(broker)["command"] + container(broker).get("args", [])


@pytest.mark.parametrize("program", ["broker", "worker"])
def test_every_key_path_is_a_mounted_secret_file_and_secret_keys_go_to_their_owner(program):
    deployment = deployment_of(program)
    env = environment(deployment)
    files = mounted_files(deployment)
    for name in ("ZEROPOOL_CURVE_SECRET_KEY", "ZEROPOOL_CURVE_SERVER_KEY", "ZEROPOOL_CURVE_KEY"):
        if name in env:
            assert files.get(env[name], ("",))[0] == "secret", f"{name}={env[name]} not mounted"
    assert {"ZEROPOOL_CURVE_SERVER_KEY", "ZEROPOOL_CURVE_KEY"} <= set(env)
    secret_keys = {os.path.basename(path) for path, (kind, _, _) in files.items()
                   if kind == "secret" and path.endswith(".key_secret")}
    assert secret_keys == {f"{program}.key_secret"}
    if program == "broker":
        authorized = env["ZEROPOOL_AUTHORIZED_KEYS"]
        inside = {os.path.basename(p) for p in files if PurePosixPath(p).parent == PurePosixPath(
            authorized)}
        assert {"worker.key", "client.key", "broker.key"} <= inside
        assert not [name for name in inside if not name.endswith(".key")]
    spec = deployment["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        if "secret" in volume:
            assert not volume["secret"]["defaultMode"] & 0o077 & ~0o040, "readable by others"


@pytest.mark.parametrize("program", ["broker", "worker"])
def test_every_variable_a_pod_sets_is_one_its_program_reads(program):
    unread = set(environment(deployment_of(program))) - read_by(PACKAGE_OF_PROGRAM[program])
    assert not unread, f"the {program} pod sets {sorted(unread)}, which {program}/ never reads"


def test_services_ports_and_addresses_agree():
    broker, worker = deployment_of("broker"), deployment_of("worker")
    labels = broker["spec"]["template"]["metadata"]["labels"]
    assert broker["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = environment(broker)
    assert port_of(env["ZEROPOOL_BIND"]) == container_port(broker, "zeropool")
    assert int(env["ZEROPOOL_METRICS_PORT"]) == container_port(broker, "metrics")
    assert env["ZEROPOOL_METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes it from another pod"
    service = find("Service", "zeropool-broker")
    assert service["spec"]["type"] == "ClusterIP", "the metrics have no authentication"
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    for svc in (service, find("Service", "zeropool-broker-external")):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert not svc["spec"]["selector"].items() <= worker_labels.items()
        for port in svc["spec"]["ports"]:
            assert container_port(broker, port["targetPort"])
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert int(service["metadata"]["annotations"]["prometheus.io/port"]) == ports["metrics"]
    assert [p["targetPort"] for p in find("Service", "zeropool-broker-external")["spec"]["ports"]] \
        == ["zeropool"], "only the CURVE port goes beyond the cluster"
    address = environment(worker)["ZEROPOOL_ADDRESS"]
    assert urlsplit(address).hostname == service["metadata"]["name"]
    assert port_of(address) == ports["zeropool"]


def port_of(address: str) -> int:
    return urlsplit(address).port


def test_pods_run_the_images_programs_as_its_unprivileged_user():
    final = final_stage()
    (user_arg,) = [a for a in dockerfile_instructions(final, "ARG") if a.startswith("USER_ID=")]
    uid = int(user_arg.split("=", 1)[1])
    assert dockerfile_instructions(final, "USER"), "the image runs as root"
    image_names = {name["name"] for name in kustomization().get("images", [])}
    for program in ("broker", "worker"):
        deployment = deployment_of(program)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid, "not the image's user"
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        assert pod["automountServiceAccountToken"] is False
        box = container(deployment)
        assert box["command"][0] in scripts()
        assert box["image"].split(":")[0] in image_names, "kustomize edit set image misses it"
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert box["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_probes_run_installed_programs_or_a_mounted_script():
    for program in ("broker", "worker"):
        deployment = deployment_of(program)
        files = mounted_files(deployment)
        for which in ("readinessProbe", "livenessProbe"):
            words = container(deployment)[which]["exec"]["command"]
            if words[0] == "python":
                assert files.get(words[1], ("",))[0] == "configMap", f"{words[1]} not mounted"
            else:
                assert words[0] in scripts()
            timeout = container(deployment)[which]["timeoutSeconds"]
            if "--timeout" in words:  # the program gives up before the kubelet does
                assert float(words[words.index("--timeout") + 1]) < timeout


def test_the_broker_is_one_and_worker_pods_have_time_to_drain():
    broker = deployment_of("broker")
    assert broker["spec"]["replicas"] == 1
    assert broker["spec"]["strategy"]["type"] == "Recreate", "an update would run two brokers"
    worker = deployment_of("worker")
    assert "replicas" not in worker["spec"], "every apply would undo the autoscaler's count"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# -- demand and capacity -----------------------------------------------------------------------

def test_demand_counts_queued_held_and_running_and_capacity_leaves_out_draining():
    state = BrokerState(peer_timeout=10.0, max_retries=3)
    state.add_client(b"c", [], now=0.0)
    assert (slots(state).demand, slots(state).capacity) == (0, 0)
    for task_id in range(10):
        state.submit(b"c", task_id, [b"call"])
    assert (slots(state).queued, slots(state).on_workers, slots(state).capacity) == (10, 0, 0)
    # Two workers of 2 threads with 3 credit each: 2 running and 1 held on each.
    state.add_worker(b"w1", 3, now=0.0, threads=2)
    state.add_worker(b"w2", 3, now=0.0, threads=2)
    state.assign()
    assert (slots(state).queued, slots(state).on_workers, slots(state).capacity) == (4, 6, 4)
    assert slots(state).demand == 10
    # A draining worker's tasks still take its slots; its slots take no more.
    state.drain(b"w1")
    assert (slots(state).demand, slots(state).capacity) == (10, 2)
    # A gone client's task that a worker still runs holds a slot too.
    state.remove_client(b"c")
    assert (slots(state).queued, slots(state).on_workers) == (0, 6)
    state.remove_worker(b"w1", lost=False)
    assert (slots(state).demand, slots(state).capacity) == (3, 2)


# -- the pods, run here ------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_the_pods_settings_and_documented_keys_make_a_cluster_whose_probes_pass(
        programs, tmp_path, keys):
    broker_pod = Pod(deployment_of("broker"), tmp_path / "broker-pod", keys)
    worker_pod = Pod(deployment_of("worker"), tmp_path / "worker-pod", keys)
    metrics = free_port()
    _, address = programs.broker(bind="tcp://127.0.0.1:*", env=broker_pod.env(
        ZEROPOOL_METRICS_HOST="127.0.0.1", ZEROPOOL_METRICS_PORT=str(metrics),
        ZEROPOOL_LOG_LEVEL="WARNING"))
    for which in ("readinessProbe", "livenessProbe"):
        result = broker_pod.probe(which, address)
        assert result.returncode == 0, f"broker {which}: {result.stdout}{result.stderr}"
    assert scrape(metrics)["zeropool_workers"] == 0

    # The broker answers and lists no worker of this pod.
    for which in ("readinessProbe", "livenessProbe"):
        result = worker_pod.probe(which, address, ZEROPOOL_ADDRESS=address)
        assert result.returncode == 1, f"worker {which}: {result.stdout}{result.stderr}"
    worker = programs.worker(address, "--log-level", "WARNING", env=worker_pod.env(
        ZEROPOOL_ADDRESS=address, ZEROPOOL_PATH=str(ROOT)))
    wait_until(lambda: worker_pod.probe("readinessProbe", address,
                                        ZEROPOOL_ADDRESS=address).returncode == 0,
               30, interval=0.2, what="the worker pod's readiness")
    assert worker_pod.probe("livenessProbe", address, ZEROPOOL_ADDRESS=address).returncode == 0

    # A client outside the cluster, with the client key pair the broker admits.
    security = zeropool.Security.from_files(str(keys / "keys" / "broker.key"),
                                          str(keys / "keys" / "client.key_secret"))
    with zeropool.Executor(address, security=security) as ex:
        # ZEROPOOL_PROCESSES is set, so the pod's process supervises the one that runs it.
        assert ex.submit(helpers.getpid).result(timeout=30) in descendants(worker.pid)
    assert scrape(metrics)["zeropool_capacity_slots"] == slots_per_pod()

    # Without the broker: the worker is not ready, and not restarted for it.
    elsewhere = f"tcp://127.0.0.1:{free_port()}"
    with cf.ThreadPoolExecutor(2) as pool:
        ready, alive = pool.map(
            lambda which: worker_pod.probe(which, elsewhere, ZEROPOOL_ADDRESS=elsewhere),
            ["readinessProbe", "livenessProbe"])
    assert (ready.returncode, alive.returncode) == (1, 0), ready.stdout + alive.stdout


def test_the_metric_the_scaledobject_reads_moves_with_queued_and_running_work(programs,
                                                                              tmp_path):
    metrics = free_port()
    _, address = programs.broker("--metrics-port", str(metrics), *FAST)
    assert {metric_types(metrics)[name] for name in query_metrics()} == {"gauge"}
    spec = scaled_object()["spec"]
    slots_per_worker = slots_per_pod()
    tasks = slots_per_worker + 2  # more than one pod's worth
    gate = str(tmp_path / "gate")
    started = [str(tmp_path / f"started-{i}") for i in range(tasks)]
    finished = [str(tmp_path / f"finished-{i}") for i in range(tasks)]

    def reads(demand: int, capacity: int) -> bool:
        now = scrape(metrics)
        return (now["zeropool_demand_slots"], now["zeropool_capacity_slots"]) == (demand,
                                                                                  capacity)

    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.touch_wait_mark, started[i], gate, finished[i])
                   for i in range(tasks)]
        # Queued, no worker: two pods' worth of demand, no capacity.
        wait_until(lambda: reads(tasks, 0), 30, what="queued demand")
        assert desired_workers(scrape(metrics)) == 2
        # One pod's worth running, the rest queued or held: demand is unchanged.
        first = programs.worker(address, "--log-level", "WARNING",
                                env=worker_pod_env(address))
        wait_until(lambda: sum(map(os.path.exists, started)) == slots_per_worker, 30,
                   what="a pod's worth of running tasks")
        wait_until(lambda: reads(tasks, slots_per_worker), 30, what="running demand")
        assert desired_workers(scrape(metrics)) == 2
        # Scaled down: the draining pod's slots leave capacity at once; its
        # running tasks still count, and those it held are queued again.
        first.send_signal(signal.SIGTERM)
        wait_until(lambda: reads(tasks, 0), 30, what="the drain")
        helpers.touch(gate)
        assert first.wait(30) == 0
        wait_until(lambda: reads(tasks - slots_per_worker, 0), 30, what="demand left queued")
        programs.worker(address, "--log-level", "WARNING", env=worker_pod_env(address))
        assert all(f.result(timeout=30) for f in futures)
        wait_until(lambda: reads(0, slots_per_worker), 30, what="no demand")
        assert desired_workers(scrape(metrics)) == spec["minReplicaCount"]


@pytest.mark.timeout(90)
def test_scale_down_by_sigterm_under_load_loses_nothing_and_runs_nothing_twice(programs,
                                                                              tmp_path):
    metrics = free_port()
    _, address = programs.broker("--metrics-port", str(metrics), *FAST)
    grace = deployment_of("worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Three pods; one runs two worker processes, as ZEROPOOL_PROCESSES=2 makes it.
    staying = programs.worker(address, "--log-level", "WARNING", env=worker_pod_env(address))
    leaving = [programs.worker(address, "--log-level", "WARNING", env=worker_pod_env(address)),
               programs.worker(address, "--log-level", "WARNING",
                               env=worker_pod_env(address, ZEROPOOL_PROCESSES="2"))]
    wait_until(lambda: scrape(metrics)["zeropool_capacity_slots"] == 4 * slots_per_pod(), 30,
               what="three pods connected")
    runs = tmp_path / "runs"
    runs.mkdir()
    count = 600

    def ran_on(pod: subprocess.Popen) -> bool:
        pids = {pod.pid} | descendants(pod.pid)
        return any(int(name.split("-")[1]) in pids for name in os.listdir(runs))

    with zeropool.Executor(address) as ex:
        futures = [ex.submit(helpers.record_run, str(runs), i, 0.02) for i in range(count)]
        completions = count_completions(futures)
        wait_until(lambda: all(ran_on(pod) for pod in [staying, *leaving]), 30,
                   what="every pod running tasks")
        # What the ReplicaSet controller does when KEDA lowers the count to one.
        for pod in leaving:
            pod.send_signal(signal.SIGTERM)
        unfinished = sum(not f.done() for f in futures)
        for pod in leaving:
            assert pod.wait(grace) == 0, "a drained worker exits 0 within the grace period"
        assert [f.result(timeout=60) for f in futures] == list(range(count))
    assert unfinished, "the scale-down came after the work: it proved nothing"
    assert set(completions.values()) == {1}
    counts = helpers.runs_per_value(str(runs))
    assert sorted(counts) == list(range(count)), "a task was lost"
    assert set(counts.values()) == {1}, "a task ran twice"
    final = scrape(metrics)
    assert final["zeropool_tasks_requeued_total"] == 0, "a drain counted as a lost worker"
    assert final["zeropool_capacity_slots"] == slots_per_pod()


def test_a_task_that_outlives_the_grace_period_is_requeued_when_the_pod_is_killed(programs,
                                                                                   tmp_path):
    metrics = free_port()
    _, address = programs.broker("--metrics-port", str(metrics), *FAST)
    pod = programs.worker(address, "--log-level", "WARNING", env=worker_pod_env(address))
    mark, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with zeropool.Executor(address) as ex:
        future = ex.submit(helpers.touch_then_wait, mark, gate)
        wait_until(lambda: os.path.exists(mark), 30, what="the task to start")
        pod.send_signal(signal.SIGTERM)
        wait_until(lambda: scrape(metrics)["zeropool_capacity_slots"] == 0, 30,
                   what="the drain")
        # The grace period is over, the task still runs: the kubelet kills the pod.
        pod.send_signal(signal.SIGKILL)
        pod.wait(10)
        os.remove(mark)
        other = programs.worker(address, "--log-level", "WARNING", env=worker_pod_env(address))
        wait_until(lambda: os.path.exists(mark), 30, what="the task to run again")
        helpers.touch(gate)
        assert future.result(timeout=30) in descendants(other.pid)
    assert scrape(metrics)["zeropool_tasks_requeued_total"] == 1
