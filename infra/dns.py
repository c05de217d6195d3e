"""DomainCertificate: an ACM certificate for `liftoff:domainName`, validated by DNS in the Route 53
zone `liftoff:hostedZoneId`, and the alias records that point the name at the load balancer."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.settings import StackSettings
from infra.tags import tags

# Record types of an alias to an ALB, by its ip_address_type.
ALIAS_RECORD_TYPES = {"ipv4": ("A",), "dualstack": ("A", "AAAA")}
VALIDATION_RECORD_TTL = 60


@dataclass
class DomainCertificateArgs:
    settings: StackSettings


class DomainCertificate(pulumi.ComponentResource):
    """`certificate_arn` resolves only once ACM has issued the certificate, so a listener using it
    waits for validation."""

    certificate_arn: pulumi.Output[str]
    url: str

    def __init__(
        self, name: str, args: DomainCertificateArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:DomainCertificate", name, None, opts)
        s = args.settings
        assert s.domain_name is not None and s.hosted_zone_id is not None
        self._resource_name = name
        self._domain = s.domain_name
        self._zone_id = s.hosted_zone_id
        child = pulumi.ResourceOptions(parent=self)

        certificate = aws.acm.Certificate(
            f"{name}-certificate",
            domain_name=self._domain,
            validation_method="DNS",
            tags=tags(s, f"{s.prefix}-certificate"),
            # Replaced create-before-delete (Pulumi's default): the listener holds the old one
            # until it switches.
            opts=child,
        )
        # One validation record per name on the certificate (here: the domain itself).
        option = certificate.domain_validation_options.apply(
            lambda options: next(o for o in options if o.domain_name == self._domain)
        )
        record = aws.route53.Record(
            f"{name}-validation",
            zone_id=self._zone_id,
            name=option.apply(lambda o: o.resource_record_name),
            type=option.apply(lambda o: o.resource_record_type),
            records=[option.apply(lambda o: o.resource_record_value)],
            ttl=VALIDATION_RECORD_TTL,
            # ACM uses the same record for every certificate of this name (e.g. a replacement).
            allow_overwrite=True,
            opts=child,
        )
        validation = aws.acm.CertificateValidation(
            f"{name}-validation",
            certificate_arn=certificate.arn,
            validation_record_fqdns=[record.fqdn],
            opts=child,
        )
        self.certificate_arn = validation.certificate_arn
        self.url = f"https://{self._domain}"
        self.register_outputs({"certificateArn": self.certificate_arn, "url": self.url})

    def point_to(self, alb: aws.lb.LoadBalancer, ip_address_type: str) -> None:
        """Alias records of the domain to `alb` (A, plus AAAA for a dualstack ALB)."""
        for record_type in ALIAS_RECORD_TYPES[ip_address_type]:
            aws.route53.Record(
                f"{self._resource_name}-alias-{record_type.lower()}",
                zone_id=self._zone_id,
                name=self._domain,
                type=record_type,
                aliases=[
                    {"name": alb.dns_name, "zone_id": alb.zone_id, "evaluate_target_health": True}
                ],
                opts=pulumi.ResourceOptions(parent=self),
            )
