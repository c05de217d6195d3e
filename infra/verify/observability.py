"""The budget, the alarms and the alert topic."""

from __future__ import annotations

from botocore.exceptions import ClientError

from infra.verify.checks import (
    Check,
    MissingOutput,
    Target,
    api_failure,
    compare,
    compare_key,
    missing_output,
    pages,
    shown,
)


def expected_notifications(target: Target) -> list[str]:
    """The budget's notifications as infra/observability.py declares them, in words."""
    s = target.settings
    found = [f"ACTUAL > {t}%" for t in sorted(set(s.budget_thresholds))]
    if s.budget_forecast_threshold is not None:
        found.append(f"FORECASTED > {s.budget_forecast_threshold}%")
    return sorted(found)


def budget_checks(target: Target) -> list[Check]:
    try:
        name = target.output("budgetName")
    except MissingOutput as missing:
        return [missing_output(target, "budget", str(missing))]
    s = target.settings
    resource = f"budget {name}"
    budgets = target.client("budgets")
    try:
        budget = budgets.describe_budget(AccountId=target.account_id, BudgetName=name)["Budget"]
        notifications = list(
            pages(
                budgets,
                "describe_notifications_for_budget",
                "Notifications",
                AccountId=target.account_id,
                BudgetName=name,
            )
        )
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "present", exc)]
    limit = budget.get("BudgetLimit", {})
    amount = float(limit.get("Amount", "nan"))
    actual = sorted(
        f"{n.get('NotificationType')} > {float(n.get('Threshold', 0)):g}%"
        + ("" if n.get("ThresholdType", "PERCENTAGE") == "PERCENTAGE" else " (absolute)")
        for n in notifications
    )
    return [
        compare(
            resource,
            "monthly limit (USD)",
            f"{s.monthly_budget_usd:.2f} USD",
            f"{amount:.2f} {limit.get('Unit')}",
            lambda: target.apply_or_keep("monthly_budget_usd", amount),
        ),
        compare(
            resource,
            "notifications",
            expected_notifications(target),
            actual,
            f"{target.pulumi_up} (applies liftoff:budgetThresholds and "
            "liftoff:budgetForecastThreshold)",
        ),
    ]


def alarm_checks(target: Target) -> list[Check]:
    try:
        names: list[str] = list(target.output("alarmNames"))
        topic_arn = target.output("alertTopicArn")
    except MissingOutput as missing:
        return [missing_output(target, "alarms", str(missing))]
    cloudwatch = target.client("cloudwatch")
    try:
        found = {
            alarm["AlarmName"]: alarm
            for alarm in pages(cloudwatch, "describe_alarms", "MetricAlarms", AlarmNames=names)
        }
    except ClientError as exc:
        return [api_failure(target, "alarms", "exist", shown(names), exc)]
    checks = []
    for name in names:
        alarm = found.get(name)
        actions = alarm.get("AlarmActions", []) if alarm else []
        actual = (
            "not found"
            if alarm is None
            else (
                "notifies the alert topic" if topic_arn in actions else f"notifies {shown(actions)}"
            )
        )
        checks.append(
            compare(
                f"alarm {name}",
                "exists and notifies",
                "notifies the alert topic",
                actual,
                target.pulumi_up,
            )
        )
    return checks


def topic_checks(target: Target) -> list[Check]:
    try:
        arn = target.output("alertTopicArn")
        key_arn = target.output("alertsKeyArn")
    except MissingOutput as missing:
        return [missing_output(target, "alert topic", str(missing))]
    resource = f"SNS topic {arn.rsplit(':', 1)[-1]}"
    try:
        attributes = target.client("sns").get_topic_attributes(TopicArn=arn)["Attributes"]
    except ClientError as exc:
        return [api_failure(target, resource, "encryption key", key_arn, exc)]
    return [
        compare_key(
            resource, "encryption key", key_arn, attributes.get("KmsMasterKeyId"), target.pulumi_up
        )
    ]
