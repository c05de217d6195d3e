"""app/Dockerfile properties, read from the file itself (no container engine here): a pinned slim
base, multi-stage with compilers only in the builder, a numeric non-root user, env that suits a
read-only root filesystem, the port and user the chart expects, and pinned dependencies that
cover every import of the gateway."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.charts.chart import CHART_DIR, REPO_ROOT

APP_DIR = REPO_ROOT / "app"
DOCKERFILE = APP_DIR / "Dockerfile"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cc ", "python3-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args[m[1] or m[2]], text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions joined over `\\` continuations, comments dropped, grouped by FROM."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, found {keyword}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return parse_dockerfile(DOCKERFILE)


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def _pins(stage: Stage) -> dict[str, str]:
    pins: dict[str, str] = {}
    for run in stage.args_of("RUN"):
        words = shlex.split(run)
        if words[:2] == ["pip", "install"]:
            for word in words[2:]:
                if word.startswith("-"):
                    continue
                name, sep, version = word.partition("==")
                assert sep, f"unpinned dependency in the Dockerfile: {word}"
                pins[canonicalize_name(name)] = version
    return pins


def test_multi_stage_on_a_pinned_slim_python_base(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    for stage in dockerfile.stages:
        base = dockerfile.resolve(stage.base)
        assert re.fullmatch(r"python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert dockerfile.final.name == "runtime"
    copied_from = {
        m[1] for args in dockerfile.final.args_of("COPY") if (m := re.search(r"--from=(\S+)", args))
    }
    assert copied_from == {"builder"}


def test_dependencies_are_installed_in_the_builder_venv_only(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stages[0]
    assert builder.name == "builder"
    assert any("python -m venv /opt/venv" in run for run in builder.args_of("RUN"))
    assert _pins(builder), "the builder installs the gateway's dependencies"
    final_runs = " ".join(dockerfile.final.args_of("RUN"))
    assert "pip install" not in final_runs
    assert "apt-get install" not in final_runs


def test_no_compilers_in_the_final_stage(dockerfile: Dockerfile) -> None:
    final_text = " ".join(args for _, args in dockerfile.final.instructions) + " "
    for compiler in COMPILERS:
        assert compiler not in final_text, f"{compiler!r} in the final stage"
    builder_text = " ".join(dockerfile.stages[0].args_of("RUN"))
    assert "build-essential" in builder_text, "compilers belong in the builder"


def test_runs_as_the_numeric_non_root_user_the_chart_expects(dockerfile: Dockerfile) -> None:
    (user,) = dockerfile.final.args_of("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER must be a numeric non-root uid, got {user}"
    assert not gid or (gid.isdigit() and int(gid) >= 1000)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert int(uid) == values["runAsUser"]


def test_works_with_a_read_only_root_filesystem(dockerfile: Dockerfile) -> None:
    env = _env(dockerfile.final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert any("compileall" in run for run in dockerfile.stages[0].args_of("RUN")), (
        "bytecode is compiled at build time since nothing can be written at run time"
    )


def test_exposes_the_chart_port_and_runs_the_gateway(dockerfile: Dockerfile) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    (expose,) = dockerfile.final.args_of("EXPOSE")
    assert int(expose.split("/")[0]) == values["server"]["port"]
    assert _env(dockerfile.final)["LIFTOFF__SERVER__PORT"] == str(values["server"]["port"])
    (entrypoint,) = dockerfile.final.args_of("ENTRYPOINT")
    assert ast.literal_eval(entrypoint) == ["python", "-m", "app"]
    assert (APP_DIR / "__main__.py").is_file()


def test_pins_are_the_tested_versions_and_satisfy_pyproject(dockerfile: Dockerfile) -> None:
    pins = _pins(dockerfile.stages[0])
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = {
        canonicalize_name(req.name): req
        for req in map(Requirement, pyproject["project"]["dependencies"])
    }
    for name, version in pins.items():
        tested = importlib.metadata.version(name)
        assert tested == version, f"Dockerfile pins {name}=={version}, the tests run {tested}"
        if name in declared:
            assert declared[name].specifier.contains(version), (
                f"{name}=={version} is outside pyproject's {declared[name]}"
            )
    assert not {"pulumi", "pulumi-aws", "pytest"} & set(pins), "no infra/test tooling in the image"


def _third_party_imports() -> set[str]:
    modules: set[str] = set()
    for path in APP_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "app"}


def test_every_gateway_import_is_installed_by_the_image(dockerfile: Dockerfile) -> None:
    pins = set(_pins(dockerfile.stages[0]))
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: distributions.get(module)
        for module in _third_party_imports()
        if not {canonicalize_name(d) for d in distributions.get(module, [])} & pins
    }
    assert not missing, f"app/ imports modules the image does not install: {missing}"


def test_dockerignore_keeps_caches_and_local_secrets_out() -> None:
    patterns = {
        line.strip()
        for line in (APP_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"**/__pycache__", "**/*.py[cod]", ".env"} <= patterns
