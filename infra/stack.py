"""Compose the components of one Liftoff stack and export its outputs."""

from __future__ import annotations

import pulumi

from infra.network import Network, NetworkArgs
from infra.settings import StackSettings, settings_from_pulumi


def build(settings: StackSettings) -> dict[str, object]:
    """Declare every component for `settings`; return the stack outputs."""
    cluster_name = f"{settings.prefix}-eks"
    network = Network(settings.prefix, NetworkArgs(settings=settings, cluster_name=cluster_name))
    return {
        "vpcId": network.vpc_id,
        "privateSubnetIds": network.private_subnet_ids,
        "publicSubnetIds": network.public_subnet_ids,
    }


def define_stack() -> StackSettings:
    """The program: settings from config (validated before any resource), build, export."""
    settings = settings_from_pulumi()
    for name, value in build(settings).items():
        pulumi.export(name, value)
    return settings
