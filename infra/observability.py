"""Observability: an SNS alert topic, an AWS Budgets monthly budget, CloudWatch alarms."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.names import budget_name
from infra.primitives import kms_key
from infra.settings import StackSettings
from infra.tags import tags

# With allkeys-lru a full cache evicts by design; sustained heavy eviction means it is too small.
EVICTIONS_PER_5_MIN = 1000


@dataclass
class ObservabilityArgs:
    settings: StackSettings
    alb_arn_suffix: pulumi.Input[str]
    target_group_arn_suffix: pulumi.Input[str]
    cache_member_ids: list[str]


class Observability(pulumi.ComponentResource):
    topic_arn: pulumi.Output[str]
    budget_name: pulumi.Output[str]
    alerts_key_arn: pulumi.Output[str]
    alarm_names: list[str]

    def __init__(
        self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:Observability", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)

        # CloudWatch and Budgets cannot publish to a topic under the AWS-managed aws/sns key: the
        # topic gets its own key whose policy lets exactly those two services use it.
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self))
        alerts_key = kms_key(
            f"{name}-alerts-key",
            s,
            description=f"{s.prefix}: alert topic encryption",
            tag_name=f"{s.prefix}-alerts",
            policy=account.account_id.apply(alerts_key_policy),
            opts=child,
        )
        topic = aws.sns.Topic(
            f"{name}-alerts",
            name=f"{s.prefix}-alerts",
            kms_master_key_id=alerts_key.arn,
            tags=tags(s, f"{s.prefix}-alerts"),
            opts=child,
        )
        aws.sns.TopicPolicy(
            f"{name}-alerts-policy",
            arn=topic.arn,
            policy=topic.arn.apply(
                lambda arn: iam.policy_document(
                    {
                        "Sid": "BudgetsAndAlarmsPublish",
                        "Effect": "Allow",
                        "Principal": {
                            "Service": ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"]
                        },
                        "Action": "SNS:Publish",
                        "Resource": arn,
                    }
                )
            ),
            opts=child,
        )
        for i, email in enumerate(s.alert_emails):
            aws.sns.TopicSubscription(
                f"{name}-alerts-email-{i}",
                topic=topic.arn,
                protocol="email",
                endpoint=email,
                opts=child,
            )

        # Budget alerts go to the topic only, not also to Budgets' own e-mail subscribers: the
        # addresses subscribe to the topic (alarms need it anyway), so each alert reaches each
        # address once, and whatever else subscribes to the topic (pager, chat) sees them too.
        def notification(kind: str, threshold: int) -> dict[str, object]:
            return {
                "comparison_operator": "GREATER_THAN",
                "notification_type": kind,
                "threshold": threshold,
                "threshold_type": "PERCENTAGE",
                "subscriber_sns_topic_arns": [topic.arn],
            }

        notifications = [notification("ACTUAL", t) for t in sorted(set(s.budget_thresholds))]
        if s.budget_forecast_threshold is not None:
            notifications.append(notification("FORECASTED", s.budget_forecast_threshold))
        budget = aws.budgets.Budget(
            f"{name}-budget",
            name=budget_name(s.prefix),
            budget_type="COST",
            limit_amount=f"{s.monthly_budget_usd:.2f}",
            limit_unit="USD",
            time_unit="MONTHLY",
            notifications=notifications,
            tags=tags(s, budget_name(s.prefix)),
            opts=child,
        )
        self.topic_arn = topic.arn
        self.budget_name = budget.name
        self.alerts_key_arn = alerts_key.arn
        self.alarm_names = []

        def alarm(
            suffix: str,
            description: str,
            namespace: str,
            metric: str,
            dimensions: dict[str, pulumi.Input[str]],
            statistic: str,
            threshold: float,
            periods: int = 1,
        ) -> None:
            self.alarm_names.append(f"{s.prefix}-{suffix}")
            aws.cloudwatch.MetricAlarm(
                f"{name}-{suffix}",
                name=f"{s.prefix}-{suffix}",
                alarm_description=description,
                namespace=namespace,
                metric_name=metric,
                dimensions=dimensions,
                statistic=statistic,
                period=300,
                evaluation_periods=periods,
                threshold=threshold,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags=tags(s, f"{s.prefix}-{suffix}"),
                opts=child,
            )

        alb = {"LoadBalancer": args.alb_arn_suffix}
        target_group = {**alb, "TargetGroup": args.target_group_arn_suffix}
        alarm(
            "alb-5xx",
            "Load balancer returned 5xx responses itself (no healthy target, timeouts)",
            "AWS/ApplicationELB",
            "HTTPCode_ELB_5XX_Count",
            alb,
            "Sum",
            s.alarm_5xx_count,
        )
        alarm(
            "target-5xx",
            "Gateway pods returned 5xx responses",
            "AWS/ApplicationELB",
            "HTTPCode_Target_5XX_Count",
            target_group,
            "Sum",
            s.alarm_5xx_count,
        )
        alarm(
            "target-response-time",
            "Average gateway response time is high",
            "AWS/ApplicationELB",
            "TargetResponseTime",
            target_group,
            "Average",
            s.alarm_response_time_seconds,
            periods=3,
        )
        for node_id in args.cache_member_ids:
            node = node_id.removeprefix(f"{s.prefix}-")
            cache = {"CacheClusterId": node_id}
            alarm(
                f"{node}-cpu",
                f"Cache engine CPU high on {node_id}",
                "AWS/ElastiCache",
                "EngineCPUUtilization",
                cache,
                "Average",
                s.alarm_cache_cpu_percent,
                periods=3,
            )
            alarm(
                f"{node}-memory",
                f"Cache memory nearly full on {node_id}",
                "AWS/ElastiCache",
                "DatabaseMemoryUsagePercentage",
                cache,
                "Average",
                s.alarm_cache_memory_percent,
                periods=3,
            )
            alarm(
                f"{node}-evictions",
                f"Cache on {node_id} evicts heavily: it is too small for the working set",
                "AWS/ElastiCache",
                "Evictions",
                cache,
                "Sum",
                EVICTIONS_PER_5_MIN,
                periods=2,
            )
        self.register_outputs(
            {
                "topicArn": topic.arn,
                "budgetName": budget.name,
                "alertsKeyArn": alerts_key.arn,
                "alarmNames": self.alarm_names,
            }
        )


def alerts_key_policy(account_id: str) -> str:
    """The account administers the key; CloudWatch and Budgets may encrypt messages with it."""
    return iam.policy_document(
        {
            "Sid": "AccountAdministers",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "AlarmsAndBudgetsPublish",
            "Effect": "Allow",
            "Principal": {"Service": ["cloudwatch.amazonaws.com", "budgets.amazonaws.com"]},
            "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
            "Resource": "*",
        },
    )
