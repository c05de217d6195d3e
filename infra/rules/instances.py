"""Rules on EC2 instances, launch templates and EBS volumes: IMDSv2 and encrypted volumes."""

from __future__ import annotations

from collections.abc import Iterator

from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    as_int,
    as_list,
    as_map,
    is_true,
    label,
    resource_rule,
)
from infra.rules.resource_types import EBS_VOLUME, EC2_INSTANCE, LAUNCH_TEMPLATE


@resource_rule(
    "CKV_AWS_79",
    "Instance metadata requires IMDSv2 tokens with a hop limit of 1 or 2",
    "error",
    [LAUNCH_TEMPLATE, EC2_INSTANCE],
    "set metadataOptions {httpTokens: required, httpPutResponseHopLimit: 1 (2 if pods need IMDS)}.",
)
def imdsv2_required(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    options = as_map(resource.inputs.get("metadataOptions"))
    if options.get("httpEndpoint") == "disabled":
        return
    if options.get("httpTokens") != "required":
        yield f"{label(resource)} allows IMDSv1 (metadataOptions.httpTokens is not 'required')."
    hop_limit = as_int(options.get("httpPutResponseHopLimit"), 1)
    if hop_limit > 2:
        yield (
            f"{label(resource)} has metadata hop limit {hop_limit}: containers several hops away "
            "can steal the node role."
        )


def _ebs_encrypted_problems(resource: ResourceRecord) -> Iterator[str]:
    inputs = resource.inputs
    if resource.type == EBS_VOLUME:
        if not is_true(inputs.get("encrypted")):
            yield f"{label(resource)} is not encrypted."
        return
    if resource.type == EC2_INSTANCE:
        root = as_map(inputs.get("rootBlockDevice"))
        if not is_true(root.get("encrypted")):
            yield f"{label(resource)} has an unencrypted root volume."
        devices = [as_map(d) for d in as_list(inputs.get("ebsBlockDevices"))]
        for device in devices:
            if not is_true(device.get("encrypted")):
                yield f"{label(resource)} has unencrypted volume {device.get('deviceName')}."
        return
    mappings = [as_map(m) for m in as_list(inputs.get("blockDeviceMappings"))]
    ebs_mappings = [m for m in mappings if m.get("ebs") is not None]
    if not ebs_mappings:
        yield (
            f"{label(resource)} declares no EBS block device mapping, so the AMI's "
            "(unencrypted by default) root volume is used."
        )
    for mapping in ebs_mappings:
        if not is_true(as_map(mapping.get("ebs")).get("encrypted")):
            yield f"{label(resource)} volume {mapping.get('deviceName')} is not encrypted."


@resource_rule(
    "CKV_AWS_8",
    "EBS volumes of nodes and instances are encrypted",
    "error",
    [LAUNCH_TEMPLATE, EC2_INSTANCE, EBS_VOLUME],
    "declare the root volume with ebs {encrypted: true, volumeType: gp3}.",
    also=["CKV_AWS_3"],
)
def ebs_encrypted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    yield from _ebs_encrypted_problems(resource)
