"""`regproxy ctl rules`: the list a sidecar on a real ZooKeeper has in force and refused, and get,
apply and delete against the config centers themselves: a real ZooKeeper (tests/zkserver.py) and
the Nacos double (tests/peers/nacos), with ctl run as an operator runs it (a process).  The tables'
formatting against the fake admin endpoint is tests/test_ctl.py's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from regproxy import ctl, ctl_rules
from regproxy.governance.keys import RULE_GROUP, zk_rule_path
from regproxy.sdk import AsyncRegproxyClient
from tests.peers.nacos import NacosDouble
from tests.ports import free_port
from tests.sidecars import SidecarProc
from tests.test_ctl import GREET, admin, find, regproxy_ctl, row
from tests.wait import wait_for
from tests.zkserver import ZooKeeperServer

ROUTER = f"{GREET}:1.0.0:.condition-router"  # the service's rule id: blank group, colon kept
CONFIGURATORS = f"{GREET}:1.0.0:.configurators"
GOOD = f"""configVersion: v3.0
scope: service
key: {GREET}:1.0.0
force: false
conditions:
  - "method = sayHi => host = 127.0.0.1"
"""
EDITED = GOOD.replace("force: false", "force: true")
# Dubbo's ConditionRuleParser would not read "condition": the sidecar refuses the rule.
MALFORMED = GOOD.replace("conditions:", "condition:")
REFUSED_CONFIGURATORS = f"""configVersion: v3.0
scope: service
key: {GREET}:1.0.0
configs:
  - side: consumer
    paramters: {{weight: "300"}}
"""


def rule_file(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- the list, from a sidecar -----------------------------------------------------------------------


@pytest.fixture
async def zk_sidecar(
    zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> AsyncIterator[SidecarProc]:
    sc = SidecarProc(
        "ctl-rules", tmp_path / "sc", registries=[f"zookeeper://{zk_server.hosts}"], app_port=free_port()
    )
    await sc.start()
    try:
        await sc.until_ready()
        async with AsyncRegproxyClient(sc.api_url) as rp:
            await rp.subscribe(GREET, version="1.0.0")
        yield sc
    finally:
        await sc.kill()


async def rules_of(sc: SidecarProc) -> dict[str, Any]:
    status, body = await sc.admin_get("/api/v1/rules")
    assert status == 200, body
    return body


@pytest.mark.process
async def test_the_list_shows_what_a_sidecar_has_in_force_and_what_it_refused(
    zk_sidecar: SidecarProc, zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    registry = f"zookeeper://{zk_server.hosts}"
    # Written with ctl, read by the sidecar: the node ctl writes is the one a sidecar watches.
    code, out, err = await regproxy_ctl(
        "rules", "apply", rule_file(tmp_path, f"{ROUTER}.yaml", GOOD), "--registry", registry
    )
    assert code == 0, err
    # ctl refuses a malformed rule; an operator with zkCli does not.
    zk.create(zk_rule_path(CONFIGURATORS), REFUSED_CONFIGURATORS.encode(), makepath=True)

    async def settled() -> bool:
        (center,) = (await rules_of(zk_sidecar))["centers"]
        in_force = [r["rule_id"] for r in center["in_force"]]
        return in_force == [ROUTER] and [r["rule_id"] for r in center["refused"]] == [CONFIGURATORS]

    await wait_for(settled, 3, "the rule in force and the refused one", detail=zk_sidecar.log_tail)

    code, out, err = await regproxy_ctl("rules", *admin(zk_sidecar))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"{registry}: ")
    assert out.splitlines()[0].endswith(" watched, 1 in force, 1 refused")
    assert row(out, registry, ROUTER).split() == [
        registry, ROUTER, zk_rule_path(ROUTER), str(zk.exists(zk_rule_path(ROUTER)).mzxid)
    ]  # fmt: skip
    refused = row(out, registry, CONFIGURATORS, "unknown-field")
    assert "unknown field 'paramters' in configs[0]" in refused
    assert "refused (the previous good version of each, if any, stays in force):" in out

    code, out, err = await regproxy_ctl("rules", "list", "--json", *admin(zk_sidecar))
    assert code == 0, err
    data = json.loads(out)
    (in_force,) = find(data, "rule_id", ROUTER)
    assert in_force["text"] == GOOD and in_force["source"] == zk_rule_path(ROUTER)
    (refusal,) = find(data, "rule_id", CONFIGURATORS)
    assert refusal["reason"] == "unknown-field"

    # A refused rule does not make the sidecar unready; status says so all the same.
    code, out, err = await regproxy_ctl("status", *admin(zk_sidecar))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith(": READY")
    assert lines[2] == (
        "1 dynamic rule refused (the previous good version of each stays in force; regproxy ctl rules "
        "shows them):"
    )
    assert lines[3].startswith(f"  {zk_rule_path(CONFIGURATORS)}: unknown-field: unknown field 'paramters'")


# -- get, apply, delete in the config center itself --------------------------------------------------


@pytest.mark.process
async def test_apply_get_delete_on_zookeeper(
    zk: KazooClient, zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    registry = ["--registry", f"zookeeper://{zk_server.hosts}"]
    path = zk_rule_path(ROUTER)

    # The rule id is the file's name, without .yaml.
    good = rule_file(tmp_path, f"{ROUTER}.yaml", GOOD)
    code, out, err = await regproxy_ctl("rules", "apply", good, *registry)
    assert (code, out) == (0, f"{ROUTER} written to {path}\n"), err
    data, stat = zk.get(path)
    assert data.decode() == GOOD

    code, out, err = await regproxy_ctl("rules", "get", ROUTER, *registry)
    assert (code, out) == (0, GOOD), err  # only the rule on stdout: `get > FILE` gives it back
    assert err == f"# {path}, version {stat.mzxid}\n"
    code, out, err = await regproxy_ctl("rules", "get", ROUTER, "--json", *registry)
    assert code == 0, err
    assert json.loads(out) == {
        "rule_id": ROUTER, "registry": f"zookeeper://{zk_server.hosts}", "source": path,
        "version": str(stat.mzxid), "text": GOOD,
    }  # fmt: skip

    # A malformed rule is refused before anything is written: the node keeps the good version.
    bad = rule_file(tmp_path, "greetings-draft.yaml", MALFORMED)
    code, out, err = await regproxy_ctl("rules", "apply", bad, "--id", ROUTER, *registry)
    assert (code, out) == (1, "")
    assert err == (
        f"regproxy ctl: {bad}: refused as a condition-router rule (unknown-field): unknown field "
        "'condition': a condition rule has conditions, configVersion, dynamic, enabled, force, key, "
        "priority, runtime, scope; nothing was written\n"
    )
    assert zk.get(path)[0].decode() == GOOD and zk.exists(path).mzxid == stat.mzxid

    # --id names the rule when the file's name does not; a name that is none and no --id: bad usage.
    edited = rule_file(tmp_path, "greetings-v2.yml", EDITED)
    code, out, err = await regproxy_ctl("rules", "apply", edited, *registry)
    assert (code, out) == (2, "")
    assert err.startswith(f"regproxy ctl: {edited}: its name is no rule id, so give one with --id RULE_ID")
    code, out, err = await regproxy_ctl("rules", "apply", edited, "--id", ROUTER, "--json", *registry)
    assert code == 0, err
    assert json.loads(out) == {
        "rule_id": ROUTER, "registry": f"zookeeper://{zk_server.hosts}", "source": path
    }  # fmt: skip
    assert zk.get(path)[0].decode() == EDITED

    code, out, err = await regproxy_ctl("rules", "delete", ROUTER, *registry)
    assert (code, out) == (0, f"{ROUTER} deleted from zookeeper://{zk_server.hosts}\n"), err
    with pytest.raises(NoNodeError):
        zk.get(path)

    code, out, err = await regproxy_ctl("rules", "delete", ROUTER, *registry)
    assert (code, out) == (1, "")
    assert err == f"regproxy ctl: no rule {ROUTER} in zookeeper://{zk_server.hosts}: nothing to delete\n"
    code, out, err = await regproxy_ctl("rules", "get", ROUTER, *registry)
    assert (code, out) == (1, "")
    assert err == f"regproxy ctl: no rule {ROUTER} in zookeeper://{zk_server.hosts} ({path})\n"


@pytest.mark.process
async def test_apply_get_delete_on_nacos(nacos: NacosDouble, tmp_path: Path) -> None:
    url = f"nacos://{nacos.address}"
    where = f"nacos dataId {ROUTER} group {RULE_GROUP}"

    code, out, err = await regproxy_ctl(
        "rules", "apply", rule_file(tmp_path, f"{ROUTER}.yml", GOOD), "--registry", url
    )
    assert (code, out) == (0, f"{ROUTER} written to {where}\n"), err
    stored = nacos.config(ROUTER, group=RULE_GROUP)
    assert stored is not None and stored.content == GOOD

    code, out, err = await regproxy_ctl("rules", "get", ROUTER, "--registry", url)
    assert (code, out, err) == (0, GOOD, f"# {where}, version {stored.md5}\n")

    bad = rule_file(tmp_path, f"{ROUTER}.yaml", MALFORMED)
    code, out, err = await regproxy_ctl("rules", "apply", bad, "--registry", url)
    assert code == 1 and "refused as a condition-router rule (unknown-field)" in err
    assert nacos.config(ROUTER, group=RULE_GROUP) == stored

    code, out, err = await regproxy_ctl("rules", "delete", ROUTER, "--registry", url, "--json")
    assert code == 0, err
    assert json.loads(out) == {"rule_id": ROUTER, "registry": url, "deleted": True}
    assert nacos.config(ROUTER, group=RULE_GROUP) is None
    code, out, err = await regproxy_ctl("rules", "get", ROUTER, "--registry", url)
    assert (code, err) == (1, f"regproxy ctl: no rule {ROUTER} in {url} ({where})\n")


@pytest.mark.process
async def test_a_config_center_that_does_not_answer_is_named() -> None:
    url = f"zookeeper://127.0.0.1:{free_port()}"
    code, out, err = await regproxy_ctl("rules", "get", ROUTER, "--registry", url, "--timeout", "1")
    assert (code, out) == (1, "")
    assert err.startswith(f"regproxy ctl: cannot connect to registry {url} within 1 s")
    assert len(err.splitlines()) == 1  # the adapter's own warnings are not the operator's business


# -- without a config center ------------------------------------------------------------------------


def test_a_rule_id_comes_from_id_or_the_files_name() -> None:
    assert ctl_rules.rule_id_of_file(f"/r/{ROUTER}.yaml", None) == ROUTER
    assert ctl_rules.rule_id_of_file(f"{ROUTER}.yml", None) == ROUTER
    assert ctl_rules.rule_id_of_file("greetings-provider.tag-router", None) == "greetings-provider.tag-router"
    assert ctl_rules.rule_id_of_file("draft.yaml", ROUTER) == ROUTER
    for name in ("draft.yaml", ".condition-router.yaml", "com.foo.Svc::.router.yaml"):
        with pytest.raises(ctl.CtlUsageError, match="its name is no rule id, so give one with --id"):
            ctl_rules.rule_id_of_file(name, None)


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def usage(*args: str) -> str:
        try:
            code = ctl.main(list(args))
        except SystemExit as e:  # argparse's own
            code = e.code
        assert code == 2
        return capsys.readouterr().err

    assert "argument RULE_ID: 'com.foo.Svc' is not <key> followed by one of" in usage(
        "rules", "get", "com.foo.Svc", "--registry", "zookeeper://zk:2181"
    )
    assert "a rule id has no '/' and no blanks" in usage(
        "rules", "delete", "a/b.tag-router", "--registry", "zookeeper://zk:2181"
    )
    assert "argument --registry: unknown registry scheme 'etcd'" in usage(
        "rules", "get", ROUTER, "--registry", "etcd://e:2379"
    )
    assert "the following arguments are required: --registry" in usage("rules", "get", ROUTER)
    # memory:// is inside one sidecar's process: no other process can reach it.
    assert usage("rules", "get", ROUTER, "--registry", "memory://") == (
        "regproxy ctl: memory:// is a registry inside one sidecar's process: no other process reaches "
        "it; give the sidecars' ZooKeeper or Nacos\n"
    )
    good = rule_file(tmp_path, f"{ROUTER}.yaml", GOOD)
    assert usage("rules", "apply", good, "--registry", "zookeeper://zk:2181?config_center=false") == (
        "regproxy ctl: zookeeper://zk:2181?config_center=false says config_center=false: sidecars given "
        "that URL read no rules from it; give the URL without it\n"
    )


def test_a_file_that_cannot_be_read_or_parsed_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No registry listens at port 1: these fail before any connection is tried.
    unreachable = ["--registry", "zookeeper://127.0.0.1:1"]
    assert ctl.main(["rules", "apply", str(tmp_path / f"{ROUTER}.yaml"), *unreachable]) == 1
    assert capsys.readouterr().err == (
        f"regproxy ctl: cannot read {tmp_path / f'{ROUTER}.yaml'}: No such file or directory\n"
    )
    tag = rule_file(tmp_path, "greetings-provider.tag-router.yaml", "force: false\ntags: 3\n")
    assert ctl.main(["rules", "apply", tag, *unreachable]) == 1
    assert capsys.readouterr().err == (
        f"regproxy ctl: {tag}: refused as a tag-router rule (type): tags must be a list, not an integer; "
        "nothing was written\n"
    )
