"""Gateway image: an ECR repository owned by the stack, and app/ built and pushed to it.

Used when `liftoff:image` is not set. The repository scans on push, refuses to overwrite a tag
(IMMUTABLE), is encrypted at rest and expires old images. The tag is a hash of the build context
plus the target platforms, so an unchanged app/ is neither rebuilt nor re-pushed, and a changed
one, or the same one built for another architecture (x86 nodes moved to Graviton), gets a tag that
has never been pushed (which IMMUTABLE requires). Pods pull by digest (`image_ref` =
repository@sha256:...).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

# Files that never reach the build (app/.dockerignore drops them too) and must not change the tag.
_IGNORED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_IGNORED_SUFFIXES = {".pyc", ".pyo", ".swp", ".tmp"}


def context_tag(context_dir: str | Path) -> str:
    """`src-<16 hex>`: a hash of every file's relative path and bytes in the build context."""
    root = Path(context_dir)
    if not (root / "Dockerfile").is_file():
        raise ValueError(f"GatewayImageArgs.context_dir = {root}: no Dockerfile in that directory")
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not _IGNORED_DIRS & set(path.relative_to(root).parts)
        and path.suffix not in _IGNORED_SUFFIXES
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"src-{digest.hexdigest()[:16]}"


def image_tag(context_dir: str | Path, platforms: list[docker_build.Platform]) -> str:
    """`src-<16 hex>-<arch>[-<arch>...]`, e.g. `src-0123456789abcdef-arm64`."""
    if not platforms:
        raise ValueError("GatewayImageArgs.platforms: at least one platform")
    # linux/amd64 -> amd64, linux/arm/v7 -> armv7; another OS keeps its name (windowsamd64).
    arches = sorted(
        {docker_build.Platform(p).value.removeprefix("linux/").replace("/", "") for p in platforms}
    )
    return f"{context_tag(context_dir)}-{'-'.join(arches)}"


def lifecycle_policy(keep_images: int, untagged_days: int) -> str:
    """ECR lifecycle policy: drop untagged layers after `untagged_days`, keep the newest images."""
    rules = [
        {
            "rulePriority": 1,
            "description": f"Expire untagged images after {untagged_days} days",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": untagged_days,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": f"Keep the {keep_images} most recent images",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": keep_images,
            },
            "action": {"type": "expire"},
        },
    ]
    return json.dumps({"rules": rules}, sort_keys=True)


@dataclass
class GatewayImageArgs:
    """`context_dir` holds the Dockerfile (app/); `tags` are the AWS tags of the repository."""

    context_dir: str
    tags: dict[str, str]
    # ECR repository name; default: the component name with "-image" replaced by "-gateway".
    repository_name: str | None = None
    # Customer-managed KMS key for the repository; default: ECR's AES-256 encryption.
    kms_key_arn: pulumi.Input[str] | None = None
    # Images kept by the lifecycle policy (rollbacks need the previous ones).
    keep_images: int = 30
    untagged_days: int = 7
    # EKS managed node groups run x86_64 instance types by default.
    platforms: list[docker_build.Platform] = field(
        default_factory=lambda: [docker_build.Platform.LINUX_AMD64]
    )
    # Delete the repository with its images on `pulumi destroy` (handy for dev stacks).
    force_delete: bool = False


class GatewayImage(pulumi.ComponentResource):
    repository: aws.ecr.Repository
    image: docker_build.Image
    tag: str
    image_ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: GatewayImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:GatewayImage", name, None, opts)
        if args.keep_images < 1 or args.untagged_days < 1:
            raise ValueError(
                f"GatewayImageArgs: keep_images ({args.keep_images}) and untagged_days "
                f"({args.untagged_days}) must be >= 1"
            )
        child = pulumi.ResourceOptions(parent=self)
        repository_name = args.repository_name or (name.removesuffix("-image") + "-gateway")
        self.tag = image_tag(args.context_dir, args.platforms)

        encryption = (
            aws.ecr.RepositoryEncryptionConfigurationArgs(
                encryption_type="KMS", kms_key=args.kms_key_arn
            )
            if args.kms_key_arn is not None
            else aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")
        )
        self.repository = aws.ecr.Repository(
            f"{name}-repository",
            name=repository_name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                scan_on_push=True
            ),
            encryption_configurations=[encryption],
            force_delete=args.force_delete,
            tags={**args.tags, "Name": repository_name},
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            repository=self.repository.name,
            policy=lifecycle_policy(args.keep_images, args.untagged_days),
            opts=child,
        )

        # Short-lived (12 h) registry credentials, fetched at deploy time; kept secret in state.
        token = aws.ecr.get_authorization_token_output(
            registry_id=self.repository.registry_id, opts=pulumi.InvokeOptions(parent=self)
        )
        registry = self.repository.repository_url.apply(lambda url: url.split("/", 1)[0])
        context = Path(args.context_dir)
        self.image = docker_build.Image(
            f"{name}-build",
            context=docker_build.BuildContextArgs(location=str(context)),
            dockerfile=docker_build.DockerfileArgs(location=str(context / "Dockerfile")),
            platforms=args.platforms,
            push=True,
            # `pulumi preview` must work without a container engine.
            build_on_preview=False,
            tags=[self.repository.repository_url.apply(lambda url: f"{url}:{self.tag}")],
            registries=[
                docker_build.RegistryArgs(
                    address=registry,
                    username=token.user_name,
                    password=pulumi.Output.secret(token.password),
                )
            ],
            opts=child,
        )
        self.image_ref = pulumi.Output.all(self.repository.repository_url, self.image.digest).apply(
            lambda parts: f"{parts[0]}@{parts[1]}"
        )
        self.register_outputs(
            {
                "repositoryUrl": self.repository.repository_url,
                "tag": self.tag,
                "imageRef": self.image_ref,
            }
        )
