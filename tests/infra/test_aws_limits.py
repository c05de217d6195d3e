"""Settings refuse what AWS would refuse, before any resource: ElastiCache engine versions (from
infra/data/elasticache-versions.json) and node types (from the price data), Budgets limits, and
the length of every name the stack builds; budget alerts reach each address once."""

from __future__ import annotations

import json
from datetime import date

import pytest

from infra.cache_engines import VERSIONS_PATH, engine_versions
from infra.mocking import ProgramRun, run_program
from infra.names import MAX_PREFIX
from infra.settings import SettingsError, load_settings

VERSIONS_FILE = "infra/data/elasticache-versions.json"


def _problems(config: dict[str, str], stack: str = "dev") -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(config, stack)
    return caught.value.problems


# --- ElastiCache engine versions ------------------------------------------------------------


def test_versions_file_names_its_source_and_date() -> None:
    data = json.loads(VERSIONS_PATH.read_text())
    assert "docs.aws.amazon.com/AmazonElastiCache" in data["source"]
    assert date.fromisoformat(data["as_of"])
    assert {"7.2", "8.0", "8.1", "9.0"} <= set(data["engines"]["valkey"])
    assert {"7.0", "7.1"} == set(data["engines"]["redis"])
    assert "redis 6.2" in next(iter(data["excluded"]))


@pytest.mark.parametrize(
    ("engine", "version", "family"),
    [
        ("valkey", "7.2", "valkey7"),
        ("valkey", "8.0", "valkey8"),
        ("valkey", "8.1", "valkey8"),
        ("valkey", "9.0", "valkey9"),
        ("redis", "7.0", "redis7"),
        ("redis", "7.1", "redis7"),
    ],
)
def test_offered_versions_deploy_with_their_parameter_group_family(
    engine: str, version: str, family: str
) -> None:
    run = run_program("dev", {"liftoff:cacheEngine": engine, "liftoff:cacheEngineVersion": version})
    group = run.one("aws:elasticache/replicationGroup:ReplicationGroup")
    params = run.one("aws:elasticache/parameterGroup:ParameterGroup")
    assert (group.inputs["engine"], group.inputs["engineVersion"]) == (engine, version)
    assert params.inputs["family"] == family
    assert group.inputs["parameterGroupName"] == params.inputs["name"]


@pytest.mark.parametrize(
    ("engine", "version"),
    [("valkey", "7.1"), ("valkey", "8.9"), ("valkey", "10.0"), ("redis", "6.2"), ("redis", "7.2")],
)
def test_versions_elasticache_does_not_offer_are_refused(engine: str, version: str) -> None:
    offered = ", ".join(engine_versions()[engine])
    assert _problems({"liftoff:cacheEngine": engine, "liftoff:cacheEngineVersion": version}) == [
        f"liftoff:cacheEngineVersion = {version}: a version ElastiCache offers for {engine}: "
        f"{offered} ({VERSIONS_FILE})"
    ]
    with pytest.raises(SettingsError):  # the program stops before any resource
        run_program("dev", {"liftoff:cacheEngine": engine, "liftoff:cacheEngineVersion": version})


def test_a_version_shape_like_7_x_is_refused() -> None:
    """ElastiCache wants major.minor for 7 and later (pulumi-aws engine_version docstring)."""
    (problem,) = _problems({"liftoff:cacheEngineVersion": "7.x"})
    assert problem.startswith("liftoff:cacheEngineVersion = 7.x: a major.minor version")


# --- cache node types -----------------------------------------------------------------------


def test_cache_node_types_outside_the_price_data_are_refused_unless_allowed() -> None:
    (problem,) = _problems({"liftoff:cacheNodeType": "cache.m5.large"})
    assert problem.startswith(
        "liftoff:cacheNodeType = cache.m5.large: a node type in infra/data/prices.json for "
        "us-east-1: cache.m7g.2xlarge,"
    )
    assert "liftoff:allowUnknownInstanceTypes=true" in problem
    allowed = load_settings(
        {"liftoff:cacheNodeType": "cache.m5.large", "liftoff:allowUnknownInstanceTypes": "true"},
        "dev",
    )
    assert allowed.cache_node_type == "cache.m5.large"
    assert load_settings({"liftoff:cacheNodeType": "cache.r7g.xlarge"}, "dev")


def test_node_families_the_stack_cannot_run_are_refused_even_when_unknown_types_are_allowed() -> (
    None
):
    allow = {"liftoff:allowUnknownInstanceTypes": "true"}
    assert _problems({**allow, "liftoff:cacheNodeType": "cache.r6gd.xlarge"}) == [
        "liftoff:cacheNodeType = cache.r6gd.xlarge: not an r6gd type: those nodes require data "
        "tiering, which Liftoff does not turn on"
    ]
    t2 = {**allow, "liftoff:cacheNodeType": "cache.t2.small"}
    assert _problems({**t2, "liftoff:cacheSnapshotRetentionDays": "3"}) == [
        "liftoff:cacheSnapshotRetentionDays = 3: 0 on cache.t2.* node types (no snapshot support)"
    ]
    assert load_settings(t2, "dev").cache_node_type == "cache.t2.small"


# --- Budgets --------------------------------------------------------------------------------


def test_at_most_ten_budget_notifications_with_the_forecast() -> None:
    nine = json.dumps(list(range(10, 100, 10)))
    assert load_settings({"liftoff:budgetThresholds": nine}, "dev").budget_thresholds
    ten = json.dumps(list(range(10, 110, 10)))
    assert _problems({"liftoff:budgetThresholds": ten}) == [
        f"liftoff:budgetThresholds = {ten}: at most 9 distinct thresholds (AWS Budgets allows 10 "
        "notifications per budget, and liftoff:budgetForecastThreshold takes one)"
    ]
    # Repeats are one notification (the budget declares each distinct threshold once).
    repeated = json.dumps([50, 50, 80, 80, 90, 90, 100, 100, 110, 120, 130, 140])
    assert load_settings({"liftoff:budgetThresholds": repeated}, "dev")


def test_at_most_ten_alert_emails_each_once() -> None:
    ten = json.dumps([f"oncall{i}@example.com" for i in range(10)])
    assert len(load_settings({"liftoff:alertEmails": ten}, "dev").alert_emails) == 10
    eleven = json.dumps([f"oncall{i}@example.com" for i in range(11)])
    assert _problems({"liftoff:alertEmails": eleven}) == [
        f"liftoff:alertEmails = {eleven}: at most 10 addresses (the AWS Budgets limit of e-mail "
        "subscribers per notification); use a distribution list for more"
    ]
    twice = json.dumps(["a@example.com", "A@example.com"])
    assert _problems({"liftoff:alertEmails": twice}) == [
        f"liftoff:alertEmails = {twice}: each address once (every alert reaches each address once)"
    ]


def test_each_budget_alert_reaches_an_address_once_through_the_topic(prod_run: ProgramRun) -> None:
    topic = prod_run.one("aws:sns/topic:Topic")
    budget = prod_run.one("aws:budgets/budget:Budget")
    assert prod_run.settings is not None and prod_run.settings.alert_emails
    notifications = budget.inputs["notifications"]
    assert len(notifications) == 4  # 50, 80, 100 actual + 100 forecast
    for notification in notifications:
        assert notification["subscriberSnsTopicArns"] == [topic.id]
        assert not notification.get("subscriberEmailAddresses")
    subscriptions = prod_run.of_type("aws:sns/topicSubscription:TopicSubscription")
    endpoints = [s.inputs["endpoint"] for s in subscriptions if s.inputs["protocol"] == "email"]
    assert sorted(endpoints) == sorted(prod_run.settings.alert_emails)


# --- name lengths ---------------------------------------------------------------------------

# AWS's limits, per resource type and input, written out independently of infra/names.py so that
# a name built anywhere in the program that outgrows its limit fails here.
AWS_NAME_LIMITS = {
    ("aws:iam/role:Role", "name"): 64,
    ("aws:lb/loadBalancer:LoadBalancer", "name"): 32,
    ("aws:lb/targetGroup:TargetGroup", "name"): 32,
    ("aws:s3/bucket:Bucket", "bucketPrefix"): 37,
    ("aws:elasticache/replicationGroup:ReplicationGroup", "replicationGroupId"): 40,
    ("aws:elasticache/subnetGroup:SubnetGroup", "name"): 255,
    ("aws:elasticache/parameterGroup:ParameterGroup", "name"): 255,
    ("aws:eks/cluster:Cluster", "name"): 100,
    ("aws:eks/nodeGroup:NodeGroup", "nodeGroupNamePrefix"): 37,  # 63 minus the 26-char suffix
    ("aws:budgets/budget:Budget", "name"): 100,
    ("aws:secretsmanager/secret:Secret", "name"): 512,
    ("aws:sns/topic:Topic", "name"): 256,
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "name"): 255,
    ("aws:cloudwatch/logGroup:LogGroup", "name"): 512,
    ("aws:ecr/repository:Repository", "name"): 256,
    ("aws:kms/alias:Alias", "name"): 256,
    ("aws:wafv2/webAcl:WebAcl", "name"): 128,
    ("aws:ec2/launchTemplate:LaunchTemplate", "namePrefix"): 99,  # 125 minus the 26-char suffix
}
CACHE_CLUSTER_ID_LIMIT = 50


def _longest_name(stack: str, length: int) -> str:
    return "n" + "x" * (length - len(stack) - 2)


def test_the_longest_allowed_prefix_fits_every_name_aws_holds() -> None:
    name = _longest_name("staging", MAX_PREFIX)
    run = run_program(
        "staging",
        {"liftoff:name": name, "liftoff:albAccessLogs": "true", "liftoff:wafEnabled": "true"},
    )
    assert run.settings is not None and len(run.settings.prefix) == MAX_PREFIX == 24
    checked = set()
    for resource in run.resources:
        for (type_, key), limit in AWS_NAME_LIMITS.items():
            if resource.type == type_ and key in resource.inputs:
                value = resource.inputs[key]
                assert len(value) <= limit, f"{type_} {key} {value!r} is over {limit}"
                checked.add(type_)
        cache_id = (resource.inputs.get("dimensions") or {}).get("CacheClusterId")
        if cache_id:
            assert len(cache_id) <= CACHE_CLUSTER_ID_LIMIT, cache_id
    assert checked == {type_ for type_, _ in AWS_NAME_LIMITS}, "every kind of name was seen"


def test_one_character_more_is_refused_with_the_names_it_would_break() -> None:
    name = _longest_name("staging", MAX_PREFIX + 1)
    prefix = f"{name}-staging"
    assert _problems({"liftoff:name": name}, "staging") == [
        f"liftoff:name = {name}: '{prefix}' (<name>-<stack>) must be at most 24 characters, it is "
        f"25: target group name '{prefix}-gateway' is 33 (AWS allows 32)"
    ]
    with pytest.raises(SettingsError):
        run_program("staging", {"liftoff:name": name})


def test_a_long_stack_name_is_refused_like_a_long_name() -> None:
    (problem,) = _problems({}, "feature-login-redesign-2")
    assert problem.startswith(
        "liftoff:name = liftoff: 'liftoff-feature-login-redesign-2' (<name>-<stack>) must be at "
        "most 24 characters, it is 32: load balancer name"
    )
    assert (
        "S3 bucket_prefix (ALB access logs) 'liftoff-feature-login-redesign-2-alb-logs-'" in problem
    )


def test_double_hyphens_are_refused_for_elasticache() -> None:
    assert _problems({"liftoff:name": "my--app"}) == [
        "liftoff:name = my--app: no two consecutive '-' (ElastiCache ids refuse them)"
    ]
