"""The IAM trust and permission policies of the CI roles (ci/iam/*.json, docs/ci.md), and that
each trusts exactly the OIDC subject the workflow job that assumes it presents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.settings import REPO_ROOT
from tests.ci.test_workflows import action_steps, load_workflow

IAM_DIR = REPO_ROOT / "ci" / "iam"
GITHUB = "token.actions.githubusercontent.com"
PULUMI = "api.pulumi.com/oidc"


def policy(name: str) -> dict[str, Any]:
    return json.loads((IAM_DIR / name).read_text())


def github_subjects(name: str) -> list[str]:
    """The `sub` each GitHub statement of a trust policy accepts (exact match only)."""
    subjects = []
    for statement in policy(name)["Statement"]:
        if not statement["Principal"]["Federated"].endswith(f"oidc-provider/{GITHUB}"):
            continue
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        condition = statement["Condition"]
        assert set(condition) == {"StringEquals"}, f"{name}: no wildcard subject"
        assert condition["StringEquals"][f"{GITHUB}:aud"] == "sts.amazonaws.com"
        subjects.append(condition["StringEquals"][f"{GITHUB}:sub"])
    return subjects


def test_every_policy_file_is_an_iam_policy_document() -> None:
    files = sorted(p.name for p in IAM_DIR.glob("*.json"))
    assert files == [
        "ecr-push.json",
        "trust-deploy.json",
        "trust-ecr-push.json",
        "trust-preview.json",
    ]
    for name in files:
        document = policy(name)
        assert document["Version"] == "2012-10-17"
        assert all(s["Effect"] == "Allow" for s in document["Statement"])


def test_the_deploy_role_trusts_the_job_of_its_github_environment_and_esc() -> None:
    assert github_subjects("trust-deploy.json") == ["repo:<OWNER>/<REPO>:environment:<ENVIRONMENT>"]
    # The deploy job presents that subject because it runs in the stack's environment.
    (job,) = load_workflow("deploy-stack.yml")["jobs"].values()
    assert job["environment"] == "${{ inputs.stack }}"
    (esc,) = [
        s
        for s in policy("trust-deploy.json")["Statement"]
        if s["Principal"]["Federated"].endswith(PULUMI)
    ]
    assert esc["Condition"]["StringEquals"] == {f"{PULUMI}:aud": "aws:<PULUMI_ORG>"}
    assert esc["Condition"]["StringLike"][f"{PULUMI}:sub"].startswith(
        "pulumi:environments:org:<PULUMI_ORG>:"
    )


@pytest.mark.parametrize(
    ("trust", "workflow", "job_name", "subject"),
    [
        ("trust-preview.json", "pull-request.yml", "preview", "pull_request"),
        ("trust-ecr-push.json", "deploy.yml", "build", "ref:refs/heads/main"),
    ],
)
def test_jobs_outside_an_environment_match_their_role_subject(
    trust: str, workflow: str, job_name: str, subject: str
) -> None:
    assert github_subjects(trust) == [f"repo:<OWNER>/<REPO>:{subject}"]
    document = load_workflow(workflow)
    job = document["jobs"][job_name]
    # An `environment:` would change the subject to environment:<name> and break the trust.
    assert "environment" not in job
    assert action_steps(job, "aws-actions/configure-aws-credentials")
    if subject.startswith("ref:"):
        assert document["on"] == {"push": {"branches": ["main"]}}
    else:
        assert "pull_request" in document["on"]


def test_the_push_role_may_push_only_to_the_gateway_repository() -> None:
    login, push = policy("ecr-push.json")["Statement"]
    assert (login["Action"], login["Resource"]) == ("ecr:GetAuthorizationToken", "*")
    assert (
        push["Resource"] == "arn:aws:ecr:<ECR_REGION>:<AWS_ACCOUNT_ID>:repository/<ECR_REPOSITORY>"
    )
    assert all(action.startswith("ecr:") and "*" not in action for action in push["Action"])
    assert "ecr:DescribeImages" in push["Action"]  # the re-run finds the commit's image
