"""Compose the components of one Liftoff stack and export its outputs."""

from __future__ import annotations

import os
from typing import Any

import pulumi

from infra import readiness
from infra.cache import CACHE_PORT, Cache, CacheArgs
from infra.cluster import Cluster, ClusterArgs
from infra.loadbalancer import LoadBalancer, LoadBalancerArgs
from infra.network import Network, NetworkArgs
from infra.observability import Observability, ObservabilityArgs
from infra.secrets import Secrets, SecretsArgs
from infra.settings import REPO_ROOT, SettingsError, StackSettings, is_arm, settings_from_pulumi
from infra.tags import base_tags
from infra.timings import ShutdownTimings
from infra.workload import Workload, WorkloadArgs, WorkloadRefs, split_image_ref


def image_reference(settings: StackSettings) -> pulumi.Output[str]:
    """`liftoff:image` when set; otherwise build app/ into the stack's ECR repository."""
    if settings.image:
        return pulumi.Output.from_input(settings.image)
    # Imported here: only stacks that build their image need the docker-build provider.
    import pulumi_docker_build as docker_build

    from infra.image import GatewayImage, GatewayImageArgs

    arm = is_arm(settings.node_instance_types[0])
    image = GatewayImage(
        f"{settings.prefix}-image",
        GatewayImageArgs(
            # Relative to the project directory, so state does not depend on the checkout path.
            context_dir=os.path.relpath(REPO_ROOT / "app", os.getcwd()),
            tags=base_tags(settings),
            # Settings keep every node type on one architecture: build only for that one.
            platforms=[
                docker_build.Platform.LINUX_ARM64 if arm else docker_build.Platform.LINUX_AMD64
            ],
            # Deletion protection keeps the images on destroy; without it destroy is one pass.
            force_delete=not settings.alb_deletion_protection,
        ),
    )
    return image.image_ref


def build(settings: StackSettings) -> dict[str, object]:
    """Declare every component for `settings`; return the stack outputs."""
    s = settings
    timings = ShutdownTimings.from_settings(s)
    cluster_name = f"{s.prefix}-eks"

    network = Network(s.prefix, NetworkArgs(settings=s, cluster_name=cluster_name))
    cluster = Cluster(
        s.prefix,
        ClusterArgs(
            settings=s,
            cluster_name=cluster_name,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            network_dependencies=network.foundation,
        ),
    )
    secrets = Secrets(s.prefix, SecretsArgs(settings=s, cluster=cluster))
    cache = Cache(
        s.prefix,
        CacheArgs(
            settings=s,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            node_security_group_id=cluster.node_security_group_id,
            kms_key_arn=secrets.key_arn,
            auth_token=secrets.redis_auth_token,
        ),
    )
    lb = LoadBalancer(
        s.prefix,
        LoadBalancerArgs(
            settings=s,
            vpc_id=network.vpc_id,
            public_subnet_ids=network.public_subnet_ids,
            cluster=cluster,
            timings=timings,
        ),
    )
    image_ref = image_reference(s)

    def refs(values: dict[str, Any]) -> WorkloadRefs:
        repository, tag, digest = split_image_ref(values["image_ref"])
        return WorkloadRefs(
            image_repository=repository,
            image_tag=tag,
            image_digest=digest,
            cache_host=values["cache_host"],
            cache_port=CACHE_PORT,
            upstream_api_key_secret_arn=values["upstream_api_key_secret_arn"],
            redis_auth_token_secret_arn=values["redis_auth_token_secret_arn"],
            client_keys_secret_arn=values["client_keys_secret_arn"],
            target_group_arn=values["target_group_arn"],
            service_account_role_arn=values["service_account_role_arn"],
            vpc_cidr=s.vpc_cidr,
            region=s.region,
            provider_api_key_secret_arns=dict(values["provider_api_key_secret_arns"]),
        )

    # By name, not position: seven strings in a row are easy to swap unnoticed.
    workload_refs = pulumi.Output.all(
        image_ref=image_ref,
        cache_host=cache.primary_endpoint,
        upstream_api_key_secret_arn=secrets.upstream_api_key_arn,
        redis_auth_token_secret_arn=secrets.redis_auth_token_arn,
        client_keys_secret_arn=secrets.client_keys_arn,
        provider_api_key_secret_arns=secrets.provider_secret_arns,
        target_group_arn=lb.target_group_arn,
        service_account_role_arn=secrets.app_role_arn,
    ).apply(refs)
    Workload(
        s.prefix,
        WorkloadArgs(settings=s, cluster=cluster, refs=workload_refs, depends_on=[lb.controller]),
    )
    observability = Observability(
        s.prefix,
        ObservabilityArgs(
            settings=s,
            alb_arn_suffix=lb.arn_suffix,
            target_group_arn_suffix=lb.target_group_arn_suffix,
            cache_member_ids=cache.member_cluster_ids,
        ),
    )
    return {
        "url": lb.url,
        "clusterName": cluster.name,
        "kubeconfig": cluster.kubeconfig,
        "cacheEndpoint": cache.primary_endpoint,
        "secretArns": secrets.secret_arns,
        "providerSecretArns": secrets.provider_secret_arns,
        "budgetName": observability.budget_name,
        "alertTopicArn": observability.topic_arn,
        # Identifiers `python -m infra.verify` looks the live resources up by.
        "albArn": lb.arn,
        "targetGroupArn": lb.target_group_arn,
        "webAclArn": lb.web_acl_arn,
        "clusterSecretsKeyArn": cluster.secrets_key_arn,
        "dataKeyArn": secrets.key_arn,
        "alertsKeyArn": observability.alerts_key_arn,
        "nodeGroupNames": cluster.node_groups.names,
        "cacheReplicationGroupId": cache.replication_group_id,
        "alarmNames": observability.alarm_names,
        "deployerArn": cluster.deployer_arn,
        "imageRef": image_ref,
        "vpcId": network.vpc_id,
        "region": s.region,
        "azCount": s.effective_az_count,
        "notes": [note for note in (s.az_note, *cluster.node_groups.notes) if note],
    }


def is_mocked() -> bool:
    """True under Pulumi's mock runtime (`make plan`, tests), False in a real preview or up."""
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.settings import get_monitor

    return isinstance(get_monitor(), MockMonitor)


def define_stack() -> None:
    """The program: settings from config (validated before any resource), the values only the
    user can supply (warnings offline, refused for real), build, export."""
    settings = settings_from_pulumi()
    found = readiness.blockers(settings, pulumi.get_stack())
    if found and not is_mocked():
        raise SettingsError(
            [b.message for b in found],
            header="this stack cannot deploy to a real account until these values are set:",
        )
    for blocker in found:
        pulumi.log.warn(f"before a real deployment: {blocker.message}")
    for name, value in build(settings).items():
        pulumi.export(name, value)
