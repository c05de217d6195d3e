"""After a deployment: `python -m infra.verify --stack <env> [--outputs FILE] [--json]`.

Reads the stack's outputs (`pulumi stack output --json --show-secrets`, or a file) and checks the
live account with boto3, expected (the stack settings) against actual: the EKS cluster, its
access entries and node groups (`cluster`), the load balancer, WAF and targets
(`loadbalancer`), the cache (`cache`), the secrets and KMS keys (`secrets`), the budget, alarms
and alert topic (`observability`). Exit status: 0 when everything matches, 1 on any drift, 2
when it cannot verify (no outputs, no Pulumi CLI, no credentials, an unreadable resource).
"""
