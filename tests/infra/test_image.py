"""GatewayImage under Pulumi's mock runtime: a hardened ECR repository (scan on push, IMMUTABLE
tags, encryption, lifecycle policy) and a docker-build Image pushed to it with ECR credentials,
exposing `image_ref` = repository@digest; plus the content-hash tag it pushes under."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc

from infra.image import GatewayImage, GatewayImageArgs, context_tag, lifecycle_policy
from infra.mocking import ensure_event_loop
from infra.workload import split_image_ref

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "app"
ACCOUNT = "123456789012"
REGION = "us-east-2"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ECR_PASSWORD = "ecr-token-SENTINEL-1d9f"
DIGEST = "sha256:" + "c0ffee" * 10 + "beef"


class ImageMocks(pulumi.runtime.Mocks):
    """Answers like AWS and docker-build would, and records what the component asked for."""

    def __init__(self) -> None:
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources[args.typ] = args
        outputs: dict[str, Any] = dict(args.inputs)
        if args.typ == "aws:ecr/repository:Repository":
            name = args.inputs["name"]
            outputs |= {
                "arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}",
                "registryId": ACCOUNT,
                "repositoryUrl": f"{REGISTRY}/{name}",
            }
            return name, outputs
        if args.typ == "docker-build:index:Image":
            outputs |= {"digest": DIGEST, "ref": f"{args.inputs['tags'][0]}@{DIGEST}"}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list]:
        self.calls.append(args)
        assert args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken", args.token
        return {
            "authorizationToken": "QVdTOmVjci10b2tlbg==",
            "expiresAt": "2026-11-26T02:00:00Z",
            "id": REGION,
            "password": ECR_PASSWORD,
            "proxyEndpoint": f"https://{REGISTRY}",
            "registryId": args.args.get("registryId"),
            "userName": "AWS",
        }, []


@pytest.fixture
def mocks() -> ImageMocks:
    recorder = ImageMocks()
    ensure_event_loop()
    pulumi.runtime.set_mocks(recorder, project="liftoff", stack="dev", preview=False)
    return recorder


def _image(**overrides: Any) -> GatewayImage:
    args = GatewayImageArgs(context_dir=str(APP_DIR), tags={"project": "liftoff"}, **overrides)
    return GatewayImage("liftoff-dev-image", args)


@pulumi.runtime.test
def test_repository_scans_on_push_refuses_tag_overwrites_and_is_encrypted(
    mocks: ImageMocks,
) -> pulumi.Output[None]:
    image = _image()

    def check(_: Any) -> None:
        repo = mocks.resources["aws:ecr/repository:Repository"].inputs
        assert repo["name"] == "liftoff-dev-gateway"
        assert repo["imageTagMutability"] == "IMMUTABLE"
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
        assert repo["forceDelete"] is False
        assert repo["tags"] == {"project": "liftoff", "Name": "liftoff-dev-gateway"}

    return image.image_ref.apply(check)


@pulumi.runtime.test
def test_repository_uses_the_customer_managed_key_when_given(
    mocks: ImageMocks,
) -> pulumi.Output[None]:
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    image = _image(kms_key_arn=key, repository_name="custom-gw")

    def check(_: Any) -> None:
        repo = mocks.resources["aws:ecr/repository:Repository"].inputs
        assert repo["name"] == "custom-gw"
        assert repo["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": key}]

    return image.image_ref.apply(check)


@pulumi.runtime.test
def test_lifecycle_policy_expires_untagged_and_keeps_the_newest(
    mocks: ImageMocks,
) -> pulumi.Output[None]:
    image = _image(keep_images=12, untagged_days=3)

    def check(_: Any) -> None:
        policy = mocks.resources["aws:ecr/lifecyclePolicy:LifecyclePolicy"].inputs
        assert policy["repository"] == "liftoff-dev-gateway"
        rules = {r["rulePriority"]: r for r in json.loads(policy["policy"])["rules"]}
        assert rules[1]["selection"] == {
            "tagStatus": "untagged",
            "countType": "sinceImagePushed",
            "countUnit": "days",
            "countNumber": 3,
        }
        assert rules[2]["selection"] == {
            "tagStatus": "any",
            "countType": "imageCountMoreThan",
            "countNumber": 12,
        }
        assert all(r["action"] == {"type": "expire"} for r in rules.values())

    return image.image_ref.apply(check)


@pulumi.runtime.test
def test_image_is_built_from_app_and_pushed_with_ecr_credentials(
    mocks: ImageMocks,
) -> pulumi.Output[None]:
    image = _image()

    def check(_: Any) -> None:
        build = mocks.resources["docker-build:index:Image"].inputs
        assert build["push"] is True
        assert build["buildOnPreview"] is False
        assert build["context"] == {"location": str(APP_DIR)}
        assert build["dockerfile"] == {"location": str(APP_DIR / "Dockerfile")}
        assert build["platforms"] == ["linux/amd64"]
        assert build["tags"] == [f"{REGISTRY}/liftoff-dev-gateway:{context_tag(APP_DIR)}-amd64"]
        registries = build["registries"]
        # The credentials reach the provider (and the state) only as a Pulumi secret.
        assert registries[rpc._special_sig_key] == rpc._special_secret_sig
        assert registries["value"] == [
            {"address": REGISTRY, "username": "AWS", "password": ECR_PASSWORD}
        ]
        (call,) = mocks.calls
        assert call.args["registryId"] == ACCOUNT

    return image.image_ref.apply(check)


@pulumi.runtime.test
def test_image_ref_is_the_repository_pinned_by_digest(mocks: ImageMocks) -> pulumi.Output[None]:
    image = _image()

    def check(ref: str) -> None:
        assert ref == f"{REGISTRY}/liftoff-dev-gateway@{DIGEST}"
        assert split_image_ref(ref) == (f"{REGISTRY}/liftoff-dev-gateway", "", DIGEST)
        assert ECR_PASSWORD not in ref

    return image.image_ref.apply(check)


def test_context_tag_follows_the_content_and_ignores_caches(tmp_path: Path) -> None:
    shutil.copytree(APP_DIR, tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    context = tmp_path / "app"
    tag = context_tag(context)
    assert tag.startswith("src-") and len(tag) == 20
    assert context_tag(context) == tag
    (context / "__pycache__").mkdir(exist_ok=True)
    (context / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"\0compiled")
    assert context_tag(context) == tag, "bytecode caches do not change what is built"
    (context / "server.py").write_text((context / "server.py").read_text() + "\n# change\n")
    assert context_tag(context) != tag
    assert context_tag(APP_DIR) == context_tag(APP_DIR)


def test_context_without_a_dockerfile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"GatewayImageArgs.context_dir = .*: no Dockerfile"):
        context_tag(tmp_path)


def test_lifecycle_policy_is_stable_json() -> None:
    assert lifecycle_policy(30, 7) == lifecycle_policy(30, 7)
    assert json.loads(lifecycle_policy(30, 7))["rules"][1]["selection"]["countNumber"] == 30


def test_bad_retention_is_refused(mocks: ImageMocks) -> None:
    with pytest.raises(ValueError, match=r"keep_images \(0\)"):
        _image(keep_images=0)
