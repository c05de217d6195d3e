"""Values only the user can supply, checked before a real deployment declares anything.

Some settings are valid config but cannot work on a real account: a documentation CIDR as the
deployer's egress range, no provider API key, prod without a certificate. Under the mock runtime
(`make plan`, tests) each is a warning naming the key and the `pulumi config set` command, so a
fresh clone plans policy-clean; in a real `pulumi up`/`preview` the program refuses with the same
messages before any resource is declared (`infra.stack.define_stack`). `infra.preflight` reports
them too, beside the checks of the deployer's machine and account.

A check is a function `(settings, stack) -> Iterable[Blocker]` registered with `@blocker_check`;
other modules add theirs the same way (imported by `infra.stack`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from infra import eks_versions
from infra.certificate import serves_https
from infra.provider_settings import first_takes_key, keyed_providers
from infra.settings import StackSettings, config_key

# RFC 5737 documentation ranges: never anybody's real egress address.
DOCUMENTATION_RANGES = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


@dataclass(frozen=True)
class Blocker:
    """A value a real run cannot work with: the key, why, and the command that fixes it."""

    key: str
    problem: str
    command: str

    @property
    def message(self) -> str:
        return f"{self.key}: {self.problem}; set it with: {self.command}"


BlockerCheck = Callable[[StackSettings, str], Iterable[Blocker]]
CHECKS: list[BlockerCheck] = []


def blocker_check(check: BlockerCheck) -> BlockerCheck:
    """Register `check` as one of the real-run checks."""
    CHECKS.append(check)
    return check


def blockers(settings: StackSettings, stack: str) -> list[Blocker]:
    """Every blocker of `settings` for `stack`, in check order."""
    return [b for check in CHECKS for b in check(settings, stack)]


def config_set(stack: str, field: str, value: str, *, secret: bool = False, path: str = "") -> str:
    """The exact `pulumi config set` command for a field (`path` like `[0]` for list items)."""
    key = config_key(field)
    flags = " --secret" if secret else ""
    if path:
        return f"pulumi config set --stack {stack}{flags} --path '{key}{path}' {value}"
    return f"pulumi config set --stack {stack}{flags} {key} {value}"


def is_documentation_range(cidr: str) -> bool:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return any(net.subnet_of(doc) for doc in DOCUMENTATION_RANGES)


@blocker_check
def documentation_cidrs(settings: StackSettings, stack: str) -> Iterator[Blocker]:
    for field in ("cluster_endpoint_public_cidrs", "alb_ingress_cidrs"):
        if field == "cluster_endpoint_public_cidrs" and not settings.cluster_endpoint_public:
            continue
        values: list[str] = getattr(settings, field)
        for index, cidr in enumerate(values):
            if is_documentation_range(cidr):
                yield Blocker(
                    config_key(field),
                    f"{cidr} is a documentation range (RFC 5737), nobody's real address; "
                    "list your office/VPN/CI egress ranges",
                    config_set(stack, field, "<your-egress-cidr>", path=f"[{index}]"),
                )


@blocker_check
def open_eks_api_in_prod(settings: StackSettings, stack: str) -> Iterator[Blocker]:
    if not (settings.is_prod and settings.cluster_endpoint_public):
        return
    if any(ipaddress.IPv4Network(c).prefixlen == 0 for c in settings.cluster_endpoint_public_cidrs):
        yield Blocker(
            config_key("cluster_endpoint_public_cidrs"),
            "0.0.0.0/0 opens the prod EKS API to the whole internet; list your egress ranges "
            "(or set liftoff:clusterEndpointPublic=false and deploy from inside the VPC)",
            config_set(stack, "cluster_endpoint_public_cidrs", "'[\"<your-egress-cidr>\"]'"),
        )


@blocker_check
def provider_api_key(settings: StackSettings, stack: str) -> Iterator[Blocker]:
    """The first provider's key (unless it is Bedrock), then each further keyed provider's."""
    if settings.llm_api_key is None and first_takes_key(settings.providers):
        yield Blocker(
            config_key("llm_api_key"),
            "unset: the gateway pods would crash-loop without the provider's API key",
            config_set(stack, "llm_api_key", "<provider-api-key>", secret=True),
        )
    for provider in keyed_providers(settings.providers):
        if provider.name not in settings.provider_api_keys:
            yield Blocker(
                f"{config_key('provider_api_keys')}.{provider.name}",
                f"unset: the gateway has no API key for provider {provider.name} "
                f"({provider.kind}); its secret would stay empty",
                config_set(
                    stack,
                    "provider_api_keys",
                    "<provider-api-key>",
                    secret=True,
                    path=f".{provider.name}",
                ),
            )


@blocker_check
def prod_certificate(settings: StackSettings, stack: str) -> Iterator[Blocker]:
    if settings.is_prod and not serves_https(settings.model_dump()):
        yield Blocker(
            config_key("domain_name"),
            "unset in prod, and so is liftoff:certificateArn: the load balancer would serve plain "
            "HTTP; give a domain in one of your Route 53 zones (or an ACM certificate ARN in "
            f"{settings.region} as liftoff:certificateArn)",
            f"{config_set(stack, 'domain_name', '<api.your-domain>')} && "
            f"{config_set(stack, 'hosted_zone_id', '<route53-zone-id>')}",
        )


@blocker_check
def extended_support_version(settings: StackSettings, stack: str) -> Iterator[Blocker]:
    """A version past its end of standard support runs only with the EXTENDED upgrade policy (at
    the extended-support rate); with STANDARD, EKS would not keep the cluster on it."""
    version = settings.kubernetes_version
    if settings.eks_support_type != "EXTENDED" and eks_versions.in_extended_support(version):
        entry = eks_versions.calendar().versions[version]
        newest = eks_versions.calendar().newest_in_standard_support(eks_versions.today())
        yield Blocker(
            config_key("eks_support_type"),
            f"liftoff:kubernetesVersion = {version} is in extended support since "
            f"{entry.end_of_standard_support} (until {entry.end_of_extended_support}, at the "
            "extended-support price); upgrade one minor version per `pulumi up` towards "
            f"{newest or 'a version in standard support'}, or keep it by accepting extended "
            "support",
            config_set(stack, "eks_support_type", "EXTENDED"),
        )
