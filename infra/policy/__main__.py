"""Entry point Pulumi runs for `pulumi preview --policy-pack infra/policy`.

Building the pack starts the analyzer's gRPC server and blocks, so it only happens when run as a
program; importing this module (tests) only builds the policy list.
"""

from pulumi_policy import PolicyPack

from infra.policies import rules_markdown
from infra.policy.pack import PACK_DESCRIPTION, PACK_NAME, build_policies

policies = build_policies()

if __name__ == "__main__":
    PolicyPack(
        name=PACK_NAME, policies=policies, description=PACK_DESCRIPTION, readme=rules_markdown()
    )
