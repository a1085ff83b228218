"""deploy/kubernetes/ is a deployment that would run: every manifest is valid against the Kubernetes
OpenAPI schemas (kubernetes-validate bundles them as JSON schemas; strict: an unknown or misspelt
field is an error, as `kubectl apply --validate=strict` makes it), and the pieces fit together.

Cross-references checked:

* each pod's configMap volumes name a ConfigMap of the directory, and its sidecar's ``--config``
  is a key of it, mounted where the argument says;
* that regproxy.yaml, with the sidecar's own flags (``$(POD_IP)`` filled in), goes through
  ``regproxy run --print-config``: the loader and validation the sidecar runs at start;
* the advertised address comes from the downward API (status.podIP);
* the probes' port is the config's admin port and their paths are admin routes (/readyz, /healthz);
* the application's preStop is ``regproxy ctl drain`` on that admin port, ctl's drain POSTs to a
  real admin route, the application keeps serving longer than drain.grace_s, and
  terminationGracePeriodSeconds covers the preStop and the whole drain;
* the application's own flags name the config's app port and API port;
* the registry URL names the ZooKeeper Service and its port.

No cluster is involved: there is none here (docs/operations.md, "Running in Kubernetes").
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from regproxy import cli, ctl
from regproxy.api.admin import build_admin_app
from regproxy.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests claim to suit (still in support when written) and the newest
# the validator knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
POD_IP = "10.244.1.7"  # what the downward API would put in $(POD_IP)

Manifest = dict[str, Any]


def manifests() -> list[tuple[str, Manifest]]:
    out: list[tuple[str, Manifest]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def of_kind(kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for _f, m in manifests() if m["kind"] == kind}


def pods() -> dict[str, dict[str, Any]]:
    """Pod specs of the Deployments that carry a regproxy sidecar, by Deployment name."""
    return {
        name: d["spec"]["template"]["spec"]
        for name, d in of_kind("Deployment").items()
        if any(c["name"] == "regproxy" for c in d["spec"]["template"]["spec"]["containers"])
    }


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes's $(VAR) expansion in command and args."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), a) for a in args]


def sidecar_config(pod: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Config:
    """The sidecar's effective config: its ConfigMap's file with its flags, as `regproxy run` reads it."""
    side = container(pod, "regproxy")
    args = expand(side["args"], {"POD_IP": POD_IP})
    assert args[0] == "run"
    config_path = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in side["volumeMounts"] if config_path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = of_kind("ConfigMap")[volume["configMap"]["name"]]
    key = str(config_path.relative_to(mount["mountPath"]))
    local = tmp_path / key
    local.write_text(config_map["data"][key])
    args[args.index("--config") + 1] = str(local)
    assert cli.main([*args, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # --print-config's YAML is read back by the same loader (data_dir is checked only at start).
    (tmp_path / "effective.yaml").write_text(yaml.safe_dump(printed))
    return load_config(tmp_path / "effective.yaml")


def admin_routes() -> set[tuple[str, str]]:
    app = build_admin_app(None)  # type: ignore[arg-type]  # routes only; nothing is served
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(found)


# --- schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(version: str) -> None:
    found = manifests()
    assert {m["kind"] for _f, m in found} >= {"ConfigMap", "Deployment", "Service", "StatefulSet"}
    for file, m in found:
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{file}: {m['kind']} {m['metadata']['name']} (Kubernetes {version}): {e}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    # That the check above can fail: the validator does look inside a pod template.
    deployment = next(iter(of_kind("Deployment").values()))
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["lifecylce"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="lifecylce"):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


# --- the pieces fit together -------------------------------------------------------------------------


def test_there_are_pods_with_a_sidecar() -> None:
    assert set(pods()) == {"greetings-provider", "greetings-consumer"}


@pytest.mark.parametrize("name", sorted(pods()))
def test_sidecar_config_loads_and_advertises_the_pod_ip(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = pods()[name]
    config = sidecar_config(pod, tmp_path, capsys)
    assert config.advertise_ip == POD_IP
    side = container(pod, "regproxy")
    (env,) = [e for e in side["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # Consumers dial the ingress on the pod IP: it must listen beyond loopback, on the declared port.
    assert config.ingress.host == "0.0.0.0"
    assert port_number(side, "dubbo-ingress") == config.ingress.port
    # The state file's directory is a volume the non-root image user can write (an emptyDir).
    (state,) = [m for m in side["volumeMounts"] if m["mountPath"] == str(config.data_dir)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == state["name"]]
    assert "emptyDir" in volume


@pytest.mark.parametrize("name", sorted(pods()))
def test_probes_reach_admin_routes_on_the_pod_ip(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = pods()[name]
    config = sidecar_config(pod, tmp_path, capsys)
    side = container(pod, "regproxy")
    routes = admin_routes()
    # The kubelet connects to the pod IP, never to the pod's loopback.
    assert config.admin.host == "0.0.0.0" and config.admin_allow_remote
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = side[probe]["httpGet"]
        assert get["path"] == path and ("GET", path) in routes
        assert port_number(side, get["port"]) == config.admin.port
        assert "httpHeaders" not in get  # /healthz and /readyz never need the token
    # A preStop on the sidecar would let the kubelet's SIGTERM arrive mid-drain: a second signal
    # stops regproxy at once (regproxy.sidecar.run's on_sigterm).
    assert "lifecycle" not in side


@pytest.mark.parametrize("name", sorted(pods()))
def test_prestop_drains_through_the_admin_endpoint_in_time(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = pods()[name]
    config = sidecar_config(pod, tmp_path, capsys)
    app = container(pod, "app")
    command = app["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in command[2].split(";")]
    drain, sleep = steps
    assert drain[:2] == ["regproxy", "ctl"]
    args = ctl.build_parser().parse_args(drain[2:])
    assert args.command == "drain"
    assert ctl.admin_base_url(args.admin) == f"http://127.0.0.1:{config.admin.port}"
    # Loopback: the admin accepts changes from there without a token (none is configured).
    assert config.admin_token is None and config.auth_token is None
    fn, _help = ctl.COMMANDS["drain"]
    assert '"POST", "/api/v1/drain"' in inspect.getsource(fn)
    assert ("POST", "/api/v1/drain") in admin_routes()
    # The application outlives the withdrawal by more than grace_s, so consumers have dropped it
    # before it stops; the grace period covers that and the sidecar's whole drain.
    assert sleep[0] == "sleep"
    serving = float(sleep[1])
    assert serving > config.drain.grace_s
    assert pod["terminationGracePeriodSeconds"] > max(serving, config.drain.grace_s + config.drain.timeout_s)


@pytest.mark.parametrize("name", sorted(pods()))
def test_application_uses_the_sidecars_ports(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = pods()[name]
    config = sidecar_config(pod, tmp_path, capsys)
    args = container(pod, "app")["args"]

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    api = f"http://{config.api.host}:{config.api.port}"
    if args[0] == "demo-provider":
        assert int(flag("--port")) == config.app_port and flag("--host") == "127.0.0.1"
        assert flag("--publish") == api
    else:
        assert args[0] == "demo-consumer"
        assert flag("--target") == f"{config.egress.host}:{config.egress.port}"
        assert flag("--subscribe") == api


def test_registry_is_the_zookeeper_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = of_kind("Service")["zookeeper"]
    (port,) = service["spec"]["ports"]
    statefulset = of_kind("StatefulSet")["zookeeper"]
    assert (
        service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    for pod in pods().values():
        config = sidecar_config(pod, tmp_path, capsys)
        (registry,) = config.registries
        assert registry.scheme == "zookeeper"
        (address,) = registry.hosts
        # <service>.<namespace>.svc: the Service's name, in the namespace the manifests assume.
        assert address.host == "zookeeper.default.svc" and address.port == port["port"]
