"""The Dockerfile and compose files, checked statically: no Docker engine runs here or in CI.

Each check reads what the files say and what the programs' source reads, so a
renamed option, a dropped variable or a moved port fails here instead of in
somebody's deployment.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import command as program_command

ROOT = Path(__file__).resolve().parent.parent
BASE = "docker-compose.yml"
CURVE = "docker-compose.curve.yml"
SECRETS_DIR = "/run/secrets"
# The package whose code reads a service's environment, by its command's
# program; `python SCRIPT` runs the demo, which reaches us through zeropool.Executor.
PACKAGE_OF_PROGRAM = {"broker": "broker", "worker": "worker", "python": "client"}
KEY_VARIABLES = ("ZEROPOOL_CURVE_SECRET_KEY", "ZEROPOOL_CURVE_SERVER_KEY", "ZEROPOOL_CURVE_KEY")


# -- reading the files -------------------------------------------------------------------------

class Override(list):
    """A sequence tagged ``!override``: it replaces the base file's instead of adding to it."""


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's merge tags."""


def _override(loader: ComposeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!override", _override)
ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load(name: str) -> dict:
    with open(ROOT / name) as f:
        return yaml.load(f, ComposeLoader)


def environment(service: dict) -> dict[str, str | None]:
    """A service's environment as a mapping, whichever syntax the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def command(service: dict) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


# Compose replaces these whole; other sequences are merged.
REPLACED = {"command", "entrypoint", "test"}


def merge(base: object, over: object, key: str = "") -> object:
    """``docker compose -f base -f over``'s result, for what these tests look at."""
    if isinstance(over, Override) or key in REPLACED:
        return list(over) if isinstance(over, list) else over
    if key == "environment":
        return {**environment({"environment": base}), **environment({"environment": over})}
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for name, value in over.items():
            merged[name] = merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in over if item not in base]
    return over


VARIANTS = {"default": lambda: load(BASE), "curve": lambda: merge(load(BASE), load(CURVE))}


@pytest.fixture(params=sorted(VARIANTS))
def compose(request) -> dict:
    return VARIANTS[request.param]()


def read_by(package: str) -> set[str]:
    """The ZEROPOOL_* variables a package's code, or protocol/'s which all share, names.

    Only whole string literals count (``environ.get("ZEROPOOL_THREADS")``,
    ``ENV_KEY = "ZEROPOOL_CURVE_KEY"``): a help text that still mentions
    ``$ZEROPOOL_THREADS`` after the code stopped reading it does not.
    """
    names = set()
    for directory in (package, "protocol"):
        for path in (ROOT / directory).rglob("*.py"):
            names |= set(re.findall(r"""["'](ZEROPOOL_[A-Z0-9_]+)["']""", path.read_text()))
    return names


def scripts() -> dict[str, str]:
    """pyproject's [project.scripts]."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: what `pip install -e` recorded from it
        from importlib.metadata import distribution
        return {e.name: e.value for e in distribution("zeropool").entry_points
                if e.group == "console_scripts"}
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def services_by_program(compose: dict) -> dict[str, dict]:
    return {command(service)[0]: service for service in compose["services"].values()}


def port_of(address: str) -> int:
    return urlsplit(address).port


def published(service: dict) -> list[tuple[str, str | None, int]]:
    """(host address, host port, container port) of each port a service publishes."""
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((entry.get("host_ip", ""), entry.get("published"), int(entry["target"])))
            continue
        *host, container = str(entry).split("/")[0].rsplit(":", 2)
        host_ip, host_port = ([""] * (2 - len(host)) + host)
        result.append((host_ip, host_port or None, int(container)))
    return result


def mounted_secrets(service: dict) -> dict[str, str]:
    """Path inside the container -> secret name, for each secret a service mounts."""
    mounted = {}
    for mount in service.get("secrets", []):
        source = mount if isinstance(mount, str) else mount["source"]
        target = source if isinstance(mount, str) else mount.get("target", source)
        mounted[str(PurePosixPath(SECRETS_DIR, target))] = source
    return mounted


# -- the compose files -------------------------------------------------------------------------

def test_the_files_parse_and_the_override_adds_no_service():
    base, curve = load(BASE), load(CURVE)
    assert {"broker", "worker", "client"} <= set(base["services"])
    assert set(curve["services"]) <= set(base["services"]), \
        "the override names a service the base file lacks: it would run half-defined"


def test_every_command_is_an_installed_program_or_a_script_in_the_repo(compose):
    installed = scripts()
    for name, service in compose["services"].items():
        program, *args = command(service)
        if program == "python":
            assert args and (ROOT / args[0]).is_file(), f"{name}: {args} names no file here"
        else:
            assert program in installed, f"{name}: {program!r} is not in [project.scripts]"
        if "healthcheck" in service:
            check = service["healthcheck"]["test"]
            assert check[0] in ("CMD", "CMD-SHELL")
            check_program = check[1] if check[0] == "CMD" else shlex.split(check[1])[0]
            assert check_program in installed, f"{name}'s healthcheck runs {check_program!r}"


def test_the_healthcheck_runs_a_subcommand_the_broker_has():
    broker = services_by_program(load(BASE))["broker"]
    _, program, subcommand, *_ = broker["healthcheck"]["test"]
    out = subprocess.run([*program_command(program), subcommand, "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {program} {subcommand}"), \
        f"`{program} {subcommand}` is not a subcommand: {out.stdout[:200]}{out.stderr[:200]}"


@pytest.mark.parametrize("name", ["broker", "worker", "client"])
def test_every_variable_a_service_sets_is_one_its_program_reads(compose, name):
    service = compose["services"][name]
    package = PACKAGE_OF_PROGRAM[command(service)[0]]
    unread = set(environment(service)) - read_by(package)
    assert not unread, f"{name} sets {sorted(unread)}, which {package}/ never reads"


def test_interpolated_variables_have_the_names_the_programs_document(compose):
    # `export ZEROPOOL_THREADS=8` on the host then means what `worker --help` says.
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            for variable in re.findall(r"\$\{?(\w+)", value or ""):
                assert variable == key, f"{name}: {key} is set from ${variable}"


def test_ports_agree(compose):
    broker = services_by_program(compose)["broker"]
    env = environment(broker)
    port = port_of(env["ZEROPOOL_BIND"])
    assert urlsplit(env["ZEROPOOL_BIND"]).hostname == "0.0.0.0", \
        "inside its container the broker must listen where other containers reach it"
    container_ports = {container for _, _, container in published(broker)}
    assert port in container_ports, "the broker's port is not the one published"
    metrics = int(env["ZEROPOOL_METRICS_PORT"])
    assert metrics in container_ports, "the metrics port is not the one published"

    check = broker["healthcheck"]["test"]
    assert check[1:3] == ["broker", "status"] and port_of(check[3]) == port

    broker_name = next(name for name, s in compose["services"].items() if s is broker)
    for name, service in compose["services"].items():
        if service is broker:
            continue
        address = environment(service).get("ZEROPOOL_ADDRESS")
        assert address, f"{name} is not told where the broker is"
        assert urlsplit(address).hostname == broker_name
        assert port_of(address) == port, f"{name} connects to another port than the broker's"

    exposed = {int(entry.split("/")[0])
               for line in dockerfile_instructions(final_stage(), "EXPOSE")
               for entry in line.split()}
    assert {port, metrics} <= exposed


def test_without_keys_everything_is_published_on_loopback_only():
    compose = load(BASE)
    broker = services_by_program(compose)["broker"]
    assert environment(broker)["ZEROPOOL_INSECURE"] == "1"
    for host_ip, _, _ in published(broker):
        assert host_ip == "127.0.0.1", "an unauthenticated broker published beyond loopback"
    for name, service in compose["services"].items():
        assert not set(environment(service)) & set(KEY_VARIABLES), f"{name} sets key paths"
    assert "secrets" not in compose


def test_metrics_stay_on_loopback_in_every_variant(compose):
    broker = services_by_program(compose)["broker"]
    metrics = int(environment(broker)["ZEROPOOL_METRICS_PORT"])
    hosts = {host_ip for host_ip, _, container in published(broker) if container == metrics}
    assert hosts == {"127.0.0.1"}


def test_the_worker_service_can_scale(compose):
    worker = services_by_program(compose)["worker"]
    assert "container_name" not in worker, "a fixed name allows one container only"
    for _, host_port, _ in published(worker):
        assert host_port is None, "a fixed host port allows one container only"
    assert worker["depends_on"]["broker"]["condition"] == "service_healthy"
    assert worker.get("restart") in ("unless-stopped", "always", "on-failure")
    assert "ZEROPOOL_THREADS" in environment(worker)


def test_the_broker_restarts_and_the_client_is_optional(compose):
    services = compose["services"]
    assert services_by_program(compose)["broker"]["restart"] == "unless-stopped"
    demo = services_by_program(compose)["python"]
    assert demo["profiles"] == ["client"]
    for name, service in services.items():
        if service is not demo:
            assert "profiles" not in service, f"{name} would not start by default"


def test_curve_turns_insecure_off_and_every_key_path_is_a_mounted_secret():
    compose = merge(load(BASE), load(CURVE))
    broker = services_by_program(compose)["broker"]
    assert environment(broker)["ZEROPOOL_INSECURE"] in ("0", "")
    assert isinstance(load(CURVE)["services"]["broker"]["ports"], Override), \
        "without !override compose adds these ports to the loopback ones: two binds of 5555"
    for program, needed in (("broker", {"ZEROPOOL_CURVE_SECRET_KEY", "ZEROPOOL_AUTHORIZED_KEYS"}),
                            ("worker", {"ZEROPOOL_CURVE_SERVER_KEY", "ZEROPOOL_CURVE_KEY"}),
                            ("python", {"ZEROPOOL_CURVE_SERVER_KEY", "ZEROPOOL_CURVE_KEY"})):
        service = services_by_program(compose)[program]
        env = environment(service)
        assert needed <= set(env), f"{program}: {sorted(needed - set(env))} not set"
        mounted = mounted_secrets(service)
        for variable in set(KEY_VARIABLES) & set(env):
            assert env[variable] in mounted, f"{program}: {variable}={env[variable]} is not mounted"
    authorized = environment(broker)["ZEROPOOL_AUTHORIZED_KEYS"]
    inside = {p: s for p, s in mounted_secrets(broker).items()
              if PurePosixPath(p).parent == PurePosixPath(authorized)}
    files = {compose["secrets"][source]["file"] for source in inside.values()}
    assert {"./keys/worker.key", "./keys/client.key"} <= files
    assert not [f for f in files if f.endswith("_secret")], "a secret key among the authorized"


def test_curve_keys_are_file_secrets_under_keys_and_each_secret_key_goes_to_its_owner_only():
    compose = merge(load(BASE), load(CURVE))
    secrets = compose["secrets"]
    assert secrets
    for name, secret in secrets.items():
        assert set(secret) == {"file"}, f"{name} is not a file secret"
        assert PurePosixPath(secret["file"]).parent == PurePosixPath("keys")
    for service_name, service in compose["services"].items():
        program = command(service)[0]
        owner = "client" if program == "python" else program
        for source in mounted_secrets(service).values():
            file = secrets[source]["file"]
            if file.endswith(".key_secret"):
                assert file == f"./keys/{owner}.key_secret", f"{service_name} gets {file}"
        for volume in service.get("volumes", []):
            assert "keys" not in str(volume), "keys must come as read-only secrets"
        for mount in service.get("secrets", []):
            mode = mount.get("mode") if isinstance(mount, dict) else None
            assert mode is None or not int(str(mode), 8) & 0o222, "a writable secret"


# -- the Dockerfile and .dockerignore ----------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def dockerfile_instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def test_every_stage_is_a_slim_official_python_image():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "one stage: whatever building needed stays in the image"
    names = set()
    for stage in stages:
        image, *alias = stage[0][1].split()
        assert re.fullmatch(r"(docker\.io/)?(library/)?python:3\.\d+-slim(-\w+)?", image), image
        names.update(alias[1:] if alias and alias[0].upper() == "AS" else [])
    assert names, "no build stage is named"


def test_the_final_image_runs_as_a_user_it_creates_without_compilers():
    stage = final_stage()
    users = dockerfile_instructions(stage, "USER")
    assert users, "the final stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = dockerfile_instructions(stage, "RUN")
    assert any(re.search(rf"(useradd|adduser)\b.*\b{re.escape(user)}\b", run) for run in runs), \
        f"the final stage does not create its user {user}"
    installs = [run for run in runs if re.search(r"\b(apt-get|apt|apk)\s.*\b(install|add)\b", run)]
    for tool in ("build-essential", "gcc", "g++", "clang", "make", "cmake", "python3-dev"):
        pattern = rf"(?<![\w.+-]){re.escape(tool)}(?![\w.+-])"
        assert not [run for run in installs if re.search(pattern, run)], \
            f"the final stage installs {tool}"


def test_zeropool_is_installed_from_the_source_tree_with_metrics():
    stages = dockerfile_stages()
    runs = [run for stage in stages for run in dockerfile_instructions(stage, "RUN")]
    assert any(re.search(r"pip install\b.*[\s'\"]\.\[metrics\]", run) for run in runs), runs
    # What the build stage installed reaches the final one, and its commands are on PATH.
    copied = [args.split()[-1] for args in dockerfile_instructions(final_stage(), "COPY")
              if args.startswith("--from=")]
    assert copied, "the final stage takes nothing from the build stage"
    path = " ".join(dockerfile_instructions(final_stage(), "ENV"))
    assert any(f"{directory.rstrip('/')}/bin" in path for directory in copied)


def test_the_image_holds_what_the_compose_commands_run():
    stage = final_stage()
    copies = dockerfile_instructions(stage, "COPY")
    assert any(args.split()[0].rstrip("/") == "examples" for args in copies)
    workdir = dockerfile_instructions(stage, "WORKDIR")[-1]
    assert workdir.startswith("/")
    cmd = dockerfile_instructions(stage, "CMD")[-1]
    argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    assert argv[0] in scripts()


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching line wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "keys/broker.key_secret",
                                  "build/lib/broker/server.py", "zeropool.egg-info/PKG-INFO",
                                  "broker/__pycache__/server.cpython-311.pyc",
                                  "bench/results/latest.json", ".pytest_cache/README.md"])
def test_dockerignore_leaves_out(path):
    assert dockerignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "broker/server.py",
                                  "protocol/frames.py", "examples/demo.py"])
def test_dockerignore_keeps_the_source_tree(path):
    assert (ROOT / path).is_file()
    assert not dockerignored(path)
