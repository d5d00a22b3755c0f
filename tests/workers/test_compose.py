"""The deployment files a newcomer or an operator runs: docker-compose.yml, Dockerfile, ./dev and .ci/run.

Docker cannot run here, so the compose stack is checked statically, but against the real code: every
``UNSHIP_*`` name the stack sets must be read by ``workers.runtime.settings.Settings`` (a typo would be ignored
silently at run time), and the shell entry points are run for the behaviour a user sees.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import AliasChoices, SecretStr
from ruamel.yaml import YAML

from workers.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
EXPECTED_SERVICES = {"postgresql", "temporal", "temporal-ui", "unship-worker", "unship-api"}
UNSHIP_SERVICES = ("unship-worker", "unship-api")
LOOPBACK = "127.0.0.1"
# Keys of a compose service this stack may use; anything else is most likely a typo Compose would reject.
KNOWN_SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "entrypoint", "env_file", "environment", "healthcheck",
    "image", "init", "labels", "logging", "networks", "ports", "profiles", "read_only", "restart", "secrets",
    "stop_grace_period", "user", "volumes", "working_dir", "deploy", "cap_drop", "security_opt", "tmpfs",
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services"
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _interpolate(value: str) -> str:
    """What Compose substitutes for ``${NAME:-default}`` when NAME is unset."""
    return INTERPOLATION.sub(lambda m: m.group("default") or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


def settings_env_names() -> dict[str, str]:
    """Every environment name Settings reads, mapped to its field (``*_FILE`` names map to secret fields)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            env_names = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            env_names = [alias]
        else:
            env_names = [f"{prefix}{field_name}"]
        for env_name in env_names:
            names[env_name.upper()] = field_name
        if _is_secret(field.annotation):
            names[f"{prefix}{field_name}_FILE".upper()] = field_name
    return names


def _is_unship_name(name: str) -> bool:
    return name.startswith("UNSHIP_") or name == "TEMPORAL_ADDRESS"


def _env_example_names() -> list[str]:
    names = []
    for line in (ROOT / "deploy" / "unship.env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.append(match.group(1))
    return names


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _dockerfile_env_names() -> list[str]:
    names = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            names += [token.split("=", 1)[0] for token in shlex.split(rest) if "=" in token]
    return names


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.split(":", 1)[1] not in ("", "latest") and "$" not in image


# --- docker-compose.yml -----------------------------------------------------------------------------------


def test_compose_has_the_stack_services(compose: dict[str, Any]) -> None:
    missing = EXPECTED_SERVICES - set(_services(compose))
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_compose_services_use_only_known_keys(compose: dict[str, Any]) -> None:
    unknown = {
        f"{name}.{key}" for name, svc in _services(compose).items() for key in svc if key not in KNOWN_SERVICE_KEYS
    }
    assert not unknown, f"unknown compose service keys (typo?): {sorted(unknown)}"


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, svc in _services(compose).items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "image" in svc:
            assert _image_is_pinned(str(svc["image"])), f"{name}: image {svc['image']!r} is not pinned to a tag"


def test_built_services_use_the_repo_dockerfile(compose: dict[str, Any]) -> None:
    built = {name: svc for name, svc in _services(compose).items() if "build" in svc}
    assert set(UNSHIP_SERVICES) <= set(built), "the unship services must be built from the Dockerfile"
    for name, svc in built.items():
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = (ROOT / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_published_ports_bind_to_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, svc in _services(compose).items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == LOOPBACK, f"{name}: port {port} is not bound to {LOOPBACK}"
            else:
                assert str(port).startswith(f"{LOOPBACK}:"), f"{name}: port {port!r} is not bound to {LOOPBACK}"
    assert published, "the stack publishes no port at all (the API and the Temporal UI should be reachable)"


def test_depends_on_names_existing_services_with_valid_conditions(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {dep: {} for dep in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            condition = (spec or {}).get("condition", "service_started")
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {dep}: unknown condition {condition!r}"


def test_unship_services_wait_for_a_healthy_temporal(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert "healthcheck" in services["temporal"], "temporal has no healthcheck to wait on"
    for name in UNSHIP_SERVICES:
        assert services[name]["depends_on"]["temporal"]["condition"] == "service_healthy", name


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("postgresql", "temporal", "unship-api"):
        check = services[name].get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
    assert "/healthz" in " ".join(services["unship-api"]["healthcheck"]["test"])


def test_volumes_and_secrets_are_declared_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    secrets = set(compose.get("secrets") or {})
    for name, svc in _services(compose).items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0] if not isinstance(volume, dict) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source!r} is not declared under volumes:"
        for secret in svc.get("secrets", []):
            secret_name = secret if isinstance(secret, str) else secret["source"]
            assert secret_name in secrets, f"{name}: secret {secret_name!r} is not declared under secrets:"


def test_unship_env_names_are_real_settings_fields(compose: dict[str, Any]) -> None:
    known = settings_env_names()
    used = [name for svc in UNSHIP_SERVICES for name in _environment(_services(compose)[svc])]
    used += _env_example_names() + _dockerfile_env_names()
    unship_names = [name for name in used if _is_unship_name(name)]
    assert unship_names, "no UNSHIP_* settings found at all"
    unknown = sorted({name for name in unship_names if name not in known})
    assert not unknown, f"not fields of workers.runtime.settings.Settings (would be ignored): {unknown}"


@pytest.mark.parametrize("service", UNSHIP_SERVICES)
def test_compose_environment_configures_settings_as_written(
    compose: dict[str, Any], service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if _is_unship_name(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    known = settings_env_names()
    env = {name: value for name, value in _environment(_services(compose)[service]).items() if _is_unship_name(name)}
    expected: dict[str, str] = {}
    for name, value in env.items():
        if name.endswith("_FILE"):
            secret_file = tmp_path / name.lower()
            secret_file.write_text("s3cret-from-file\n")
            value = str(secret_file)
            expected[known[name]] = "s3cret-from-file"
        else:
            expected[known[name]] = value
        monkeypatch.setenv(name, value)

    settings = Settings()

    for field_name, want in expected.items():
        got = getattr(settings, field_name)
        got = got.get_secret_value() if isinstance(got, SecretStr) else str(got)
        assert got == want, f"{service}: {field_name} is {got!r}, compose sets {want!r}"


def test_api_and_worker_share_one_temporal_namespace_and_queue(compose: dict[str, Any]) -> None:
    worker, api = (_environment(_services(compose)[name]) for name in UNSHIP_SERVICES)
    for name in ("TEMPORAL_ADDRESS", "UNSHIP_TEMPORAL_NAMESPACE", "UNSHIP_TASK_QUEUE", "UNSHIP_STATE_DIR"):
        assert worker.get(name) == api.get(name), f"worker and API disagree on {name}"
    namespace_job = _environment(_services(compose)["temporal-namespace"])
    assert namespace_job["NAMESPACE"] == api["UNSHIP_TEMPORAL_NAMESPACE"], "the namespace created is not the one used"


def test_unship_services_run_the_cli_commands(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert services["unship-worker"]["command"] == ["worker"]
    assert services["unship-api"]["command"] == ["up"]


def test_temporal_dynamic_config_is_valid_yaml(compose: dict[str, Any]) -> None:
    env = _environment(_services(compose)["temporal"])
    config = ROOT / "deploy" / "temporal" / "dynamicconfig" / Path(env["DYNAMIC_CONFIG_FILE_PATH"]).name
    data = _load_yaml(config)
    assert isinstance(data, dict) and data
    for key, entries in data.items():
        assert isinstance(entries, list) and all("value" in entry for entry in entries), key


# --- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned_python_311_slim() -> None:
    bases = [rest.split()[0] for keyword, rest in _dockerfile_instructions() if keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim-bookworm" for base in bases), bases


def test_dockerfile_runs_the_unship_console_script_as_non_root() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    instructions = dict(_dockerfile_instructions())
    entrypoint = _json_exec_form(instructions["ENTRYPOINT"])
    assert entrypoint[0] in scripts, f"ENTRYPOINT {entrypoint} is not a console script of pyproject"
    assert entrypoint == ["unship"]
    user = instructions["USER"].split(":")[0]
    assert user not in ("root", "0"), "the image runs as root"
    assert "/healthz" in instructions["HEALTHCHECK"]


def _json_exec_form(text: str) -> list[str]:
    import json

    value = json.loads(text)
    assert isinstance(value, list), f"not exec form: {text}"
    return value


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts for its contents."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_copies_files_that_exist_and_are_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in _dockerfile_instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repo"
            assert not _dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for junk in (".venv", ".git", "services/unleash/node_modules", "tests", ".unship"):
        assert _dockerignored(junk, patterns), f"{junk} would be sent to the Docker build context"


# --- ./dev and .ci/run --------------------------------------------------------------------------------------


def _run(*args: str | Path, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kwargs
    )


def test_shell_entry_points_are_executable_and_parse() -> None:
    for path in [ROOT / "dev", ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh"))]:
        assert _run("bash", "-n", path).returncode == 0, f"{path} has a bash syntax error"
    for path in sorted((ROOT / "deploy" / "temporal").glob("*.sh")):
        assert _run("sh", "-n", path).returncode == 0, f"{path} has a sh syntax error"
    for path in (ROOT / "dev", ROOT / ".ci" / "run"):
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_dev_help_lists_the_commands_from_any_directory(tmp_path: Path) -> None:
    result = _run(ROOT / "dev", "help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("demo", "test", "bootstrap", "bench"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.M), f"usage does not mention {command}"


def test_dev_rejects_unknown_commands_and_missing_benchmarks() -> None:
    unknown = _run(ROOT / "dev", "frobnicate")
    assert unknown.returncode == 2 and "unknown command 'frobnicate'" in unknown.stderr
    no_name = _run(ROOT / "dev", "bench")
    assert no_name.returncode == 2 and "usage: ./dev bench NAME" in no_name.stderr
    missing = _run(ROOT / "dev", "bench", "no-such-benchmark")
    assert missing.returncode == 2 and "bench/no-such-benchmark.py" in missing.stderr


def test_ci_run_calls_the_readme_test_command() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*\./dev test\b", text, re.M), ".ci/run must run ./dev test"


@pytest.mark.parametrize(("lint_exit", "pytest_exit", "ci_exit"), [(0, 0, 0), (0, 1, 1), (0, 5, 1), (1, 0, 1)])
def test_ci_run_lints_then_passes_pytest_exit_code_but_fails_when_no_tests_ran(
    tmp_path: Path, lint_exit: int, pytest_exit: int, ci_exit: int
) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    stub = tmp_path / "dev"
    stub.write_text('#!/usr/bin/env bash\necho "$1" >> "$(dirname "$0")/called"\n'
                    f'if [ "$1" = lint ]; then exit {lint_exit}; fi\nexit {pytest_exit}\n')
    stub.chmod(0o755)

    result = _run("bash", tmp_path / ".ci" / "run", cwd=tmp_path, env={**os.environ, "CI": "true"})

    assert result.returncode == ci_exit, result.stdout + result.stderr
    called = (tmp_path / "called").read_text().split()
    # a lint finding fails CI before the tests run
    assert called == (["lint"] if lint_exit else ["lint", "test"])
    if pytest_exit == 5:
        assert "no tests" in result.stderr
