"""Liftoff's policy rules, one module per concern; `infra.policies` is their public entry point.

Importing a rule module registers its rules in `RULES`, so the modules are imported in the order
of `RULE_MODULES`: the order of the rule reference (infra/policy/README.md) and of plan output.
"""

import importlib

from infra.rules.base import RULES, Rule

RULE_MODULES = (
    "eks",
    "vpc_cni",
    "instances",
    "cache",
    "secrets",
    "loadbalancer",
    "s3",
    "network",
    "account",
    "waf",
)
for _module in RULE_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
