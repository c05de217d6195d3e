"""Access to the cluster is what the stack declares: API authentication without the creator
bootstrap, one access entry per admin/viewer principal (the deployer among the admins, mapped
from its STS session back to its role, path included), and nothing in the cluster before the
access policies are associated."""

from __future__ import annotations

import json

import pytest

from infra.access import ADMIN_POLICY_ARN, VIEW_POLICY_ARN, deployer_principal, grants
from infra.mocking import ACCOUNT_ID, MOCK_CALLER_ARN, ProgramRun, run_program
from infra.settings import SettingsError, load_stack_file

CLUSTER = "aws:eks/cluster:Cluster"
ENTRY = "aws:eks/accessEntry:AccessEntry"
ASSOCIATION = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"
ALICE = f"arn:aws:iam::{ACCOUNT_ID}:role/platform-admin"
BOB = f"arn:aws:iam::{ACCOUNT_ID}:user/bob"
AUDITOR = "arn:aws:iam::210987654321:role/security/auditor"  # another account, with a path
DEPLOYER_SESSION = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/deployer/alice-cli"


def policies(run: ProgramRun) -> dict[str, set[str]]:
    """principal ARN -> access policy ARNs associated with it."""
    found: dict[str, set[str]] = {}
    for association in run.of_type(ASSOCIATION):
        found.setdefault(association.inputs["principalArn"], set()).add(
            association.inputs["policyArn"]
        )
    return found


def entries(run: ProgramRun) -> list[str]:
    return [e.inputs["principalArn"] for e in run.of_type(ENTRY)]


def test_cluster_uses_access_entries_only_and_no_creator_bootstrap(dev_run: ProgramRun) -> None:
    cluster = dev_run.one(CLUSTER)
    assert cluster.inputs["accessConfig"] == {
        "authenticationMode": "API",
        "bootstrapClusterCreatorAdminPermissions": False,
    }
    # The bootstrap flag is create-only (a change would replace the cluster).
    assert (
        "accessConfig.bootstrapClusterCreatorAdminPermissions"
        in (cluster.options["ignore_changes"])
    )


def test_the_deployer_is_an_admin_by_default(dev_run: ProgramRun) -> None:
    assert entries(dev_run) == [MOCK_CALLER_ARN]
    assert policies(dev_run) == {MOCK_CALLER_ARN: {ADMIN_POLICY_ARN}}
    entry = dev_run.one(ENTRY)
    assert entry.inputs["type"] == "STANDARD"
    association = dev_run.one(ASSOCIATION)
    assert association.inputs["accessScope"] == {"type": "cluster"}
    assert entry.urn in association.options["dependencies"]


def test_admins_and_viewers_get_their_policies() -> None:
    run = run_program(
        "dev",
        {
            "liftoff:clusterAdmins": json.dumps([ALICE, BOB]),
            "liftoff:clusterViewers": json.dumps([AUDITOR]),
        },
    )
    assert policies(run) == {
        ALICE: {ADMIN_POLICY_ARN},
        BOB: {ADMIN_POLICY_ARN},
        MOCK_CALLER_ARN: {ADMIN_POLICY_ARN},
        AUDITOR: {VIEW_POLICY_ARN},
    }


def test_an_assumed_role_deployer_is_mapped_back_to_its_role() -> None:
    run = run_program("dev", caller_arn=DEPLOYER_SESSION)
    assert entries(run) == [f"arn:aws:iam::{ACCOUNT_ID}:role/deployer"]
    assert DEPLOYER_SESSION not in entries(run)


def test_a_role_path_dropped_by_sts_is_recovered_from_iam() -> None:
    run = run_program("dev", caller_arn=DEPLOYER_SESSION, role_paths={"deployer": "/ci/liftoff/"})
    assert entries(run) == [f"arn:aws:iam::{ACCOUNT_ID}:role/ci/liftoff/deployer"]


def test_a_deployer_already_listed_gets_no_second_entry() -> None:
    deployer_role = f"arn:aws:iam::{ACCOUNT_ID}:role/ci/liftoff/deployer"
    run = run_program(
        "dev",
        {"liftoff:clusterAdmins": json.dumps([deployer_role, ALICE])},
        caller_arn=DEPLOYER_SESSION,
        role_paths={"deployer": "/ci/liftoff/"},
    )
    assert sorted(entries(run)) == sorted([deployer_role, ALICE])
    assert len(entries(run)) == len(set(entries(run)))


def test_duplicates_and_admins_listed_as_viewers_are_merged() -> None:
    run = run_program(
        "dev",
        {
            "liftoff:clusterAdmins": json.dumps([ALICE, ALICE]),
            "liftoff:clusterViewers": json.dumps([ALICE, AUDITOR, AUDITOR]),
        },
    )
    assert sorted(entries(run)) == sorted([ALICE, MOCK_CALLER_ARN, AUDITOR])
    assert policies(run)[ALICE] == {ADMIN_POLICY_ARN}  # an admin stays an admin
    assert policies(run)[AUDITOR] == {VIEW_POLICY_ARN}


def test_reordering_the_lists_keeps_every_resource_name() -> None:
    """Names follow the principal, not its position: a reorder replaces nothing (a replacement
    would create the new entry before deleting the old one: EKS's 409)."""

    def names(admins: list[str]) -> set[str]:
        run = run_program("dev", {"liftoff:clusterAdmins": json.dumps(admins)})
        return {r.name for r in run.resources if r.type in (ENTRY, ASSOCIATION)}

    assert names([ALICE, BOB]) == names([BOB, ALICE])
    assert names([ALICE]) < names([ALICE, BOB])


def test_grants_and_deployer_mapping_directly() -> None:
    assert [(g.principal_arn, g.level) for g in grants([ALICE], [ALICE, BOB], ALICE)] == [
        (ALICE, "admin"),
        (BOB, "viewer"),
    ]
    roles = {"deployer": f"arn:aws:iam::{ACCOUNT_ID}:role/ci/deployer"}
    assert deployer_principal(DEPLOYER_SESSION, roles.__getitem__) == roles["deployer"]
    assert deployer_principal(BOB, roles.__getitem__) == BOB
    with pytest.raises(SettingsError, match="federated users"):
        deployer_principal(f"arn:aws:sts::{ACCOUNT_ID}:federated-user/carol", roles.__getitem__)


@pytest.mark.parametrize("key", ["liftoff:clusterAdmins", "liftoff:clusterViewers"])
def test_session_arns_are_refused_in_the_lists(key: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_stack_file("dev", {key: json.dumps([ALICE, DEPLOYER_SESSION])})
    assert raised.value.problems == [
        f'{key} = ["{ALICE}", "{DEPLOYER_SESSION}"]: a list of IAM role or user ARNs '
        "(arn:aws:iam::<account>:role/<path/name>), not STS session ARNs"
    ]


def test_kubeconfig_role_must_be_an_admin() -> None:
    with pytest.raises(SettingsError) as raised:
        load_stack_file("dev", {"liftoff:kubeconfigRoleArn": ALICE})
    assert raised.value.problems == [
        f"liftoff:kubeconfigRoleArn = {ALICE}: one of liftoff:clusterAdmins (the role "
        "`aws eks get-token` assumes needs the admin access entry); add it there"
    ]
    run = run_program(
        "dev",
        {"liftoff:kubeconfigRoleArn": ALICE, "liftoff:clusterAdmins": json.dumps([ALICE])},
    )
    assert policies(run)[ALICE] == {ADMIN_POLICY_ARN}
    args = json.loads(run.outputs["kubeconfig"])["users"][0]["user"]["exec"]["args"]
    assert args[args.index("--role-arn") + 1] == ALICE


def dependency_closure(run: ProgramRun, urn: str) -> set[str]:
    """What `urn` waits for: its dependencies, its provider's and its parents', transitively."""
    by_urn = {r.urn: r for r in run.resources}
    seen: set[str] = set()
    todo = [urn]
    while todo:
        resource = by_urn.get(todo.pop())
        if resource is None:
            continue
        nexts = list(resource.options["dependencies"])
        if resource.options["provider"]:
            nexts.append(resource.options["provider"].rsplit("::", 1)[0])
        if resource.parent_urn:
            nexts.append(resource.parent_urn)
        for dep in nexts:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_kubernetes_resource_waits_for_the_access_policies(prod_run: ProgramRun) -> None:
    associations = {a.urn for a in prod_run.of_type(ASSOCIATION)}
    assert associations
    kubernetes = [r for r in prod_run.resources if r.type.startswith("kubernetes:")]
    assert any(r.type == "kubernetes:helm.sh/v3:Release" for r in kubernetes)
    for resource in kubernetes:
        missing = associations - dependency_closure(prod_run, resource.urn)
        assert not missing, f"{resource.type} {resource.name} does not wait for {missing}"
    provider = prod_run.one("pulumi:providers:kubernetes")
    assert associations <= set(provider.options["dependencies"])
    # The check can fail: the cluster itself comes before any access entry.
    assert not associations & dependency_closure(prod_run, prod_run.one(CLUSTER).urn)
