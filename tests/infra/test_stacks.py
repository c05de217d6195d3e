"""The real program under Pulumi mocks, for each stack: what it declares and the invariants that
users of EKS kits trip over (IMDSv2, encryption, private nodes, desired size left to the
autoscaler, destroy ordering, secret kubeconfig, AUTH token kept out of state, two-AZ regions)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from infra.mocking import (
    LiftoffMocks,
    ProgramRun,
    RecordedResource,
    RecordingMonitor,
    mocked_runtime,
    run_program,
)
from infra.settings import ENVIRONMENTS, SettingsError

CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
SUBNET = "aws:ec2/subnet:Subnet"
NAT = "aws:ec2/natGateway:NatGateway"
ALB = "aws:lb/loadBalancer:LoadBalancer"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
LISTENER = "aws:lb/listener:Listener"
CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
KMS_KEY = "aws:kms/key:Key"
BUDGET = "aws:budgets/budget:Budget"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
# Types that carry no tags in AWS (associations, rules attached to other resources, policies).
UNTAGGABLE = {
    "aws:ec2/route:Route",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:kms/alias:Alias",
    "aws:secretsmanager/secretVersion:SecretVersion",
    "aws:sns/topicSubscription:TopicSubscription",
    "aws:sns/topicPolicy:TopicPolicy",
    "aws:eks/accessPolicyAssociation:AccessPolicyAssociation",
    "aws:wafv2/webAclAssociation:WebAclAssociation",
    "aws:ecr/lifecyclePolicy:LifecyclePolicy",
}


def _release(run: ProgramRun, release_name: str) -> RecordedResource:
    return next(r for r in run.of_type(RELEASE) if r.inputs["name"] == release_name)


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_inventory(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    counts = Counter(r.type for r in run.resources)
    settings = run.settings
    assert settings is not None
    azs = settings.effective_az_count
    for component in (
        "Network",
        "Cluster",
        "Secrets",
        "Cache",
        "LoadBalancer",
        "Workload",
        "Observability",
    ):
        assert counts[f"liftoff:index:{component}"] == 1, component
    assert counts["aws:ec2/vpc:Vpc"] == 1
    assert counts[SUBNET] == 2 * azs
    assert counts[NAT] == (azs if settings.nat_gateways == "perAz" else 1)
    assert counts[CLUSTER] == 1 and counts[NODE_GROUP] == 1 and counts[LAUNCH_TEMPLATE] == 1
    assert counts["aws:iam/openIdConnectProvider:OpenIdConnectProvider"] == 1
    assert counts["aws:eks/addon:Addon"] == 4  # vpc-cni, kube-proxy, pod identity agent, coredns
    assert counts[ALB] == 1 and counts[TARGET_GROUP] == 1
    assert counts[CACHE] == 1
    assert counts[SECRET] == 3
    assert counts[KMS_KEY] == 3  # EKS secrets, data (secrets + cache), alert topic
    assert counts[BUDGET] == 1
    assert counts["aws:sns/topic:Topic"] == 1
    assert counts["aws:ec2/vpcEndpoint:VpcEndpoint"] == 5
    assert counts["aws:ec2/flowLog:FlowLog"] == 1
    assert counts["pulumi:providers:kubernetes"] == 1
    releases = {r.inputs["name"] for r in run.of_type(RELEASE)}
    expected = {"cluster-autoscaler", "metrics-server", "aws-load-balancer-controller", "gateway"}
    if settings.vpa_mode != "Off":
        expected.add("vpa")
    assert releases == expected
    # 3 ALB/target alarms + CPU, memory and evictions per cache node
    assert counts[ALARM] == 3 + 3 * (1 + settings.cache_replicas)
    assert counts["aws:s3/bucket:Bucket"] == (1 if settings.alb_access_logs else 0)
    assert counts["aws:wafv2/webAcl:WebAcl"] == (1 if settings.waf_enabled else 0)


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_every_resource_belongs_to_a_component(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    """Components own their children (ResourceOptions(parent=self)): nothing hangs off the stack."""
    run = stack_runs[stack]
    by_urn = {r.urn: r for r in run.resources}
    for r in run.resources:
        if not r.custom:
            assert r.type.startswith("liftoff:index:"), r.type
            continue
        parent = by_urn.get(r.parent_urn)
        while parent is not None and parent.custom:
            parent = by_urn.get(parent.parent_urn)
        assert parent is not None, f"{r.type} {r.name} is not inside a component"


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_every_taggable_resource_is_tagged(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    settings = run.settings
    assert settings is not None
    for r in run.resources:
        if not r.custom or r.type in UNTAGGABLE or not r.type.startswith("aws:"):
            continue
        if r.type.startswith("aws:s3/bucket") and r.type != "aws:s3/bucket:Bucket":
            continue  # bucket sub-configurations are not taggable
        tags = r.inputs.get("tags")
        assert tags, f"{r.type} {r.name} is untagged"
        assert tags["project"] == "liftoff" and tags["environment"] == stack
        for key, value in settings.tags.items():
            assert tags[key] == value


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_nodes_imdsv2_encrypted_gp3_in_private_subnets(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    run = stack_runs[stack]
    lt = run.one(LAUNCH_TEMPLATE)
    assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
    assert lt.inputs["metadataOptions"]["httpPutResponseHopLimit"] in (1, 2)
    ebs = lt.inputs["blockDeviceMappings"][0]["ebs"]
    assert ebs["encrypted"] == "true" and ebs["volumeType"] == "gp3"

    subnets = run.of_type(SUBNET)
    private_ids = {s.urn for s in subnets if s.inputs["tags"]["liftoff/tier"] == "private"}
    assert private_ids
    ng = run.one(NODE_GROUP)
    # The node group's subnets are exactly the private subnets (by dependency and by count).
    deps = set(ng.options["dependencies"])
    assert private_ids <= deps
    public = {s.urn for s in subnets if s.inputs["tags"]["liftoff/tier"] == "public"}
    assert len(ng.inputs["subnetIds"]) == len(private_ids)
    assert all(not s.inputs.get("mapPublicIpOnLaunch") for s in subnets if s.urn in public)
    assert ng.inputs["launchTemplate"]["id"].startswith("lt-")


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_desired_size_is_left_to_the_cluster_autoscaler(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    run = stack_runs[stack]
    ng = run.one(NODE_GROUP)
    assert ng.options["ignore_changes"] == ["scalingConfig.desiredSize"]
    settings = run.settings
    assert settings is not None
    assert ng.inputs["scalingConfig"] == {
        "minSize": settings.node_min_size,
        "desiredSize": settings.node_desired_size,
        "maxSize": settings.node_max_size,
    }
    cluster_name = run.one(CLUSTER).inputs["name"]
    assert ng.inputs["tags"][f"k8s.io/cluster-autoscaler/{cluster_name}"] == "owned"
    assert ng.inputs["tags"]["k8s.io/cluster-autoscaler/enabled"] == "true"
    autoscaler = _release(run, "cluster-autoscaler")
    assert autoscaler.inputs["values"]["autoDiscovery"]["clusterName"] == cluster_name
    role_arn = autoscaler.inputs["values"]["rbac"]["serviceAccount"]["annotations"][
        "eks.amazonaws.com/role-arn"
    ]
    assert role_arn.endswith("-cluster-autoscaler")


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_destroy_order_releases_and_nodes_go_before_the_network(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    """Pulumi deletes dependents first: each release and the node group must depend on the
    NAT gateways, subnets and VPC, so they are gone before the network is torn down."""
    run = stack_runs[stack]
    foundation = {
        r.urn
        for r in run.resources
        if r.type in ("aws:ec2/vpc:Vpc", SUBNET, NAT, "aws:ec2/internetGateway:InternetGateway")
    }
    nats = {r.urn for r in run.of_type(NAT)}
    ng = run.one(NODE_GROUP)
    assert foundation <= set(ng.options["dependencies"])
    # Nothing in the node group's inputs refers to the NATs: only an explicit depends_on
    # keeps them (and the nodes' egress) alive until the nodes are gone.
    assert nats <= set(ng.options["depends_on"])
    for release in run.of_type(RELEASE):
        assert foundation <= set(release.options["dependencies"]), release.name
        assert nats | {ng.urn} <= set(release.options["depends_on"]), release.name
        assert (
            release.options["provider"].split("::")[-2]
            == run.one("pulumi:providers:kubernetes").urn.split("::")[-1]
        )
    # The gateway (and its TargetGroupBinding) is removed while the LB controller still runs.
    gateway, controller = _release(run, "gateway"), _release(run, "aws-load-balancer-controller")
    assert controller.urn in gateway.options["depends_on"]
    assert run.one(TARGET_GROUP).urn in controller.options["depends_on"]


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_kubeconfig_is_a_secret_output_using_aws_eks_get_token(
    stack_runs: dict[str, ProgramRun], stack: str
) -> None:
    run = stack_runs[stack]
    assert "kubeconfig" in run.secret_outputs
    kubeconfig = json.loads(run.outputs["kubeconfig"])
    user = kubeconfig["users"][0]["user"]["exec"]
    assert user["command"] == "aws" and user["args"][:2] == ["eks", "get-token"]
    assert run.outputs["clusterName"] in user["args"]
    assert kubeconfig["clusters"][0]["cluster"]["server"].startswith("https://")
    provider = run.one("pulumi:providers:kubernetes")
    assert "kubeconfig" in provider.secret_inputs


def test_kubeconfig_role_and_profile() -> None:
    role = "arn:aws:iam::123456789012:role/platform-admin"
    run = run_program(
        "dev",
        {
            "liftoff:kubeconfigRoleArn": role,
            "liftoff:kubeconfigProfile": "platform",
            "liftoff:clusterAdmins": json.dumps([role]),
        },
    )
    exec_config = json.loads(run.outputs["kubeconfig"])["users"][0]["user"]["exec"]
    assert exec_config["args"][-2:] == ["--role-arn", role]
    assert exec_config["env"] == [{"name": "AWS_PROFILE", "value": "platform"}]
    # The role, an admin, is let into the cluster with an access entry.
    entries = run.of_type("aws:eks/accessEntry:AccessEntry")
    assert role in {e.inputs["principalArn"] for e in entries}


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_redis_auth_token_never_plain(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    cache = run.one(CACHE)
    assert "authToken" not in cache.inputs  # the state-stored variant is not used
    assert "authTokenWo" in cache.secret_inputs and cache.inputs["authTokenWoVersion"] == 1
    token = cache.inputs["authTokenWo"]
    assert len(token) == 64
    version = next(r for r in run.of_type(SECRET_VERSION) if "redis-auth-token" in r.name)
    assert version.secret_inputs == {"secretStringWo"} and "secretString" not in version.inputs
    everything_plain = json.dumps(
        [{k: v for k, v in r.inputs.items() if k not in r.secret_inputs} for r in run.resources]
        + [run.outputs[name] for name in run.outputs if name not in run.secret_outputs],
        default=str,
    )
    assert token not in everything_plain


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_encryption_everywhere(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    cluster = run.one(CLUSTER)
    assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
    assert cluster.inputs["encryptionConfig"]["provider"]["keyArn"].startswith("arn:aws:kms:")
    assert set(cluster.inputs["enabledClusterLogTypes"]) == {
        "api",
        "audit",
        "authenticator",
        "controllerManager",
        "scheduler",
    }
    for key in run.of_type(KMS_KEY):
        assert key.inputs["enableKeyRotation"] is True
    cache = run.one(CACHE)
    assert cache.inputs["atRestEncryptionEnabled"] and cache.inputs["transitEncryptionEnabled"]
    assert cache.inputs["kmsKeyId"].startswith("arn:aws:kms:")
    data_key_arn = cache.inputs["kmsKeyId"]
    for secret in run.of_type(SECRET):
        assert secret.inputs["kmsKeyId"] == data_key_arn


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_load_balancer(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    settings = run.settings
    assert settings is not None
    alb = run.one(ALB)
    assert alb.inputs["dropInvalidHeaderFields"] is True
    assert alb.inputs["enableDeletionProtection"] is settings.alb_deletion_protection
    assert bool(alb.inputs.get("accessLogs", {}).get("enabled")) is settings.alb_access_logs
    tg = run.one(TARGET_GROUP)
    assert tg.inputs["targetType"] == "ip" and tg.inputs["port"] == 8080
    assert tg.inputs["healthCheck"]["path"] == "/readyz"
    assert tg.inputs["deregistrationDelay"] > alb.inputs["idleTimeout"] - 60
    assert run.outputs["url"].startswith("http://") and run.outputs["url"].endswith(
        ".elb.amazonaws.com"
    )
    # Only the ALB accepts traffic from anywhere, and only on 80/443.
    for rule in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        if rule.inputs.get("cidrIpv4") == "0.0.0.0/0":
            assert rule.inputs["fromPort"] in (80, 443) and "-alb-in-" in rule.name


def test_https_listener_and_redirect_with_a_certificate() -> None:
    cert = "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"
    run = run_program("dev", {"liftoff:certificateArn": cert})
    listeners = {r.inputs["port"]: r for r in run.of_type(LISTENER)}
    assert listeners[443].inputs["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert listeners[443].inputs["certificateArn"] == cert
    redirect = listeners[80].inputs["defaultActions"][0]
    assert redirect["type"] == "redirect" and redirect["redirect"]["protocol"] == "HTTPS"
    assert run.outputs["url"].startswith("https://")


def test_prod_access_log_bucket_is_private_and_writable_by_elb_only(prod_run: ProgramRun) -> None:
    policy = json.loads(prod_run.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    allow, deny = policy["Statement"]
    assert allow["Principal"] == {"AWS": "arn:aws:iam::797873946194:root"}  # ELB in us-west-2
    assert allow["Action"] == "s3:PutObject" and "/alb/AWSLogs/123456789012/" in allow["Resource"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    block = prod_run.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
    assert all(
        block[k]
        for k in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_cache(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    settings = run.settings
    assert settings is not None
    cache = run.one(CACHE).inputs
    ha = settings.cache_replicas >= 1
    assert cache["numCacheClusters"] == 1 + settings.cache_replicas
    assert cache["automaticFailoverEnabled"] is ha and cache["multiAzEnabled"] is ha
    assert cache["snapshotRetentionLimit"] == settings.cache_snapshot_retention_days
    params = run.one("aws:elasticache/parameterGroup:ParameterGroup").inputs
    assert params["parameters"] == [{"name": "maxmemory-policy", "value": "allkeys-lru"}]
    cache_sg = next(
        r
        for r in run.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r.name.endswith("-cache-sg")
    )
    rules = [
        r
        for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if cache_sg.urn in r.options["dependencies"]
    ]
    assert len(rules) == 1
    rule = rules[0].inputs
    assert rule["fromPort"] == rule["toPort"] == 6379 and "cidrIpv4" not in rule
    assert rule["referencedSecurityGroupId"].startswith("sg-")
    assert run.outputs["cacheEndpoint"].startswith("master.")


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_app_role_reads_exactly_its_secrets(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    role = next(r for r in run.of_type("aws:iam/role:Role") if r.name.endswith("-app-role"))
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    (condition,) = [v for k, v in trust["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert condition == "system:serviceaccount:liftoff:liftoff-gateway"
    policy_resource = next(
        r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.endswith("-app-policy")
    )
    statements = json.loads(policy_resource.inputs["policy"])["Statement"]
    assert sorted(statements[0]["Resource"]) == sorted(run.outputs["secretArns"].values())
    assert statements[1]["Action"] == "kms:Decrypt"
    assert statements[1]["Resource"] == run.one(CACHE).inputs["kmsKeyId"]
    gateway = _release(run, "gateway")
    assert gateway.inputs["values"]["serviceAccount"]["roleArn"].endswith("liftoff-gateway")


@pytest.mark.parametrize("stack", ENVIRONMENTS)
def test_outputs(stack_runs: dict[str, ProgramRun], stack: str) -> None:
    run = stack_runs[stack]
    for name in ("url", "clusterName", "kubeconfig", "cacheEndpoint", "secretArns", "budgetName"):
        assert run.outputs[name], name
    assert set(run.outputs["secretArns"]) == {"upstreamApiKey", "redisAuthToken", "clientKeys"}
    assert run.outputs["budgetName"] == f"liftoff-{stack}-monthly"
    assert run.secret_outputs == {"kubeconfig"}


def test_namespace_gets_the_readiness_gate_label(dev_run: ProgramRun) -> None:
    namespace = dev_run.one("kubernetes:core/v1:Namespace")
    labels = namespace.inputs["metadata"]["labels"]
    assert labels["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
    assert _release(dev_run, "gateway").inputs["namespace"] == "liftoff"


def test_us_west_1_uses_two_azs_and_warns() -> None:
    run = run_program("prod", {"aws:region": "us-west-1"})
    subnets = run.of_type(SUBNET)
    assert len(subnets) == 4
    # us-west-1a is usw1-az2 in the mock account, where EKS refuses control-plane subnets.
    assert {s.inputs["availabilityZone"] for s in subnets} == {"us-west-1b", "us-west-1c"}
    assert len(run.of_type(NAT)) == 2
    assert any("us-west-1 offers only 2 availability zones" in w for w in run.warnings)
    assert run.outputs["azCount"] == 2 and run.outputs["notes"]


def test_secret_config_values_stay_secret() -> None:
    keys = json.dumps([{"name": "svc", "key": "lk-CLIENT-SECRET-123"}])
    run = run_program(
        "dev", {"liftoff:llmApiKey": "sk-UPSTREAM-SECRET-456", "liftoff:clientKeys": keys}
    )
    versions = {r.name: r for r in run.of_type(SECRET_VERSION)}
    upstream = next(v for n, v in versions.items() if "upstream-api-key" in n)
    client = next(v for n, v in versions.items() if "client-keys" in n)
    assert upstream.inputs["secretStringWo"] == "sk-UPSTREAM-SECRET-456"
    assert client.inputs["secretStringWo"] == keys
    for version in (upstream, client):
        assert version.secret_inputs == {"secretStringWo"}
    assert not any("liftoff:llmApiKey: unset" in w for w in run.warnings)
    public = json.dumps(
        [{k: v for k, v in r.inputs.items() if k not in r.secret_inputs} for r in run.resources]
        + [run.outputs],
        default=str,
    )
    assert "UPSTREAM-SECRET" not in public and "CLIENT-SECRET" not in public


def test_without_secret_config_the_program_still_runs(dev_run: ProgramRun) -> None:
    """No llmApiKey: the secret exists without a version and the user is told; a client key is
    generated so the gateway never runs open."""
    names = {r.name for r in dev_run.of_type(SECRET_VERSION)}
    assert not any("upstream-api-key" in n for n in names)
    assert any("client-keys" in n for n in names)
    assert any("liftoff:llmApiKey: unset" in w for w in dev_run.warnings)
    assert any(
        r.name.endswith("default-client-key")
        for r in dev_run.of_type("random:index/randomPassword:RandomPassword")
    )


def test_invalid_config_fails_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra import mocking

    registered: list[str] = []
    original = mocking.RecordingMonitor.RegisterResource

    def spy(self: mocking.RecordingMonitor, request: object) -> object:
        registered.append(request.type)  # type: ignore[attr-defined]
        return original(self, request)

    monkeypatch.setattr(mocking.RecordingMonitor, "RegisterResource", spy)
    with pytest.raises(SettingsError, match="liftoff:nodeMaxSize = 0"):
        run_program("dev", {"liftoff:nodeMaxSize": "0"})
    assert registered == []


def _run_entry_point(config: dict[str, str], monitor: RecordingMonitor, stack: str = "dev") -> None:
    """Execute infra/__main__.py as the Pulumi CLI would, with `config`, under mocks."""
    import runpy

    with mocked_runtime(stack, config, monitor):
        runpy.run_module("infra.__main__", run_name="__main__")


def test_entry_point_builds_the_stack_from_pulumi_config() -> None:
    monitor = RecordingMonitor(LiftoffMocks("us-east-2", "dev"))
    _run_entry_point(
        {"aws:region": "us-east-2", "liftoff:image": "ghcr.io/acme/gw:1", "liftoff:azCount": "2"},
        monitor,
    )
    recorded = monitor.recorded
    assert len([r for r in recorded if r.type == SUBNET]) == 4
    assert next(r for r in recorded if r.type == CLUSTER).inputs["name"] == "liftoff-dev-eks"


def test_entry_point_fails_on_bad_config_before_declaring_anything() -> None:
    """The CLI path reads pulumi config and stops with every problem and no traceback."""
    import pulumi

    monitor = RecordingMonitor(LiftoffMocks("us-east-1", "dev"))
    with pytest.raises(pulumi.RunError) as excinfo:
        _run_entry_point({"aws:region": "eu-west-1", "liftoff:hpaCpuTarget": "0"}, monitor)
    assert "aws:region = eu-west-1" in str(excinfo.value)
    assert "liftoff:hpaCpuTarget = 0" in str(excinfo.value)
    assert monitor.recorded == []


def test_runs_are_repeatable_in_one_process(dev_run: ProgramRun) -> None:
    again = run_program("dev")
    assert sorted((r.type, r.name) for r in again.resources) == sorted(
        (r.type, r.name) for r in dev_run.resources
    )
    assert again.outputs == dev_run.outputs


def test_alerts_reach_the_topic_and_the_topic_key_lets_alarms_publish(prod_run: ProgramRun) -> None:
    topic = prod_run.one("aws:sns/topic:Topic")
    key = next(k for k in prod_run.of_type(KMS_KEY) if k.name.endswith("-alerts-key"))
    assert topic.inputs["kmsMasterKeyId"].startswith("arn:aws:kms:")
    assert key.urn in topic.options["dependencies"]
    statements = json.loads(key.inputs["policy"])["Statement"]
    publishers = next(s for s in statements if s["Sid"] == "AlarmsAndBudgetsPublish")
    assert set(publishers["Principal"]["Service"]) == {
        "cloudwatch.amazonaws.com",
        "budgets.amazonaws.com",
    }
    topic_arn = prod_run.outputs["alertTopicArn"]
    for alarm in prod_run.of_type(ALARM):
        assert alarm.inputs["alarmActions"] == [topic_arn], alarm.name
    budget = prod_run.one(BUDGET).inputs
    assert budget["limitAmount"] == "3000.00" and budget["timeUnit"] == "MONTHLY"
    kinds = [(n["notificationType"], n["threshold"]) for n in budget["notifications"]]
    assert kinds == [("ACTUAL", 50), ("ACTUAL", 80), ("ACTUAL", 100), ("FORECASTED", 100)]
    for notification in budget["notifications"]:
        assert notification["subscriberSnsTopicArns"] == [topic_arn]
        # Through the topic only: each alert reaches each address once.
        assert "subscriberEmailAddresses" not in notification
    assert prod_run.one("aws:sns/topicSubscription:TopicSubscription").inputs["endpoint"] == (
        "oncall@example.com"
    )


def test_a_given_image_is_deployed_as_is_without_a_build() -> None:
    image = "ghcr.io/acme/liftoff-gateway:1.4.2@sha256:" + "c" * 64
    run = run_program("dev", {"liftoff:image": image})
    assert not run.of_type("docker-build:index:Image")
    assert not run.of_type("aws:ecr/repository:Repository")
    values = _release(run, "gateway").inputs["values"]["image"]
    assert values["repository"] == "ghcr.io/acme/liftoff-gateway"
    assert values["tag"] == "1.4.2" and values["digest"] == "sha256:" + "c" * 64
    assert run.outputs["imageRef"] == image


def test_built_image_is_pulled_by_digest(dev_run: ProgramRun) -> None:
    values = _release(dev_run, "gateway").inputs["values"]["image"]
    repository = dev_run.one("aws:ecr/repository:Repository")
    assert values["repository"].endswith(f"/{repository.inputs['name']}")
    assert values["digest"].startswith("sha256:") and len(values["digest"]) == 71
    assert dev_run.one("docker-build:index:Image").inputs["platforms"] == ["linux/amd64"]
