from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from regproxy.address import Address, parse_address
from regproxy.config import LB_NAMES, Config, ConfigError, load_config
from regproxy.registry.registry_url import RegistryURL
from regproxy.routing.from_config import static_table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "regproxy.yaml"


def errors_of(data: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    return dict(info.value.errors)


def one_error(data: Any) -> tuple[str, str]:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return next(iter(errors.items()))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def minimal_cluster(**host: Any) -> dict[str, Any]:
    return {"clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:20880", **host}]}]}


# --- the example file and defaults ---------------------------------------------------------------


def test_example_config_loads() -> None:
    c = load_config(EXAMPLE)
    assert c.egress == Address("127.0.0.1", 20881)
    assert str(c.ingress) == "0.0.0.0:20882"
    assert c.app_port == 20880
    assert c.registries == []
    assert [cl.name for cl in c.clusters] == ["greetings"]
    assert str(c.clusters[0].hosts[0].address) == "greetings-provider.example:20882"
    assert c.routes[0].match.service == "org.apache.dubbo.samples.api.GreetingsService"
    assert c.routes[0].cluster == "greetings"


@pytest.mark.process
def test_example_file_documents_every_key() -> None:
    # Every key of the model appears in the example, so the example stays the reference.
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert set(raw) == set(Config.model_fields)
    for section in ("discovery", "limits", "timeouts", "upstream", "drain", "tls"):
        assert set(raw[section]) == set(type(getattr(Config(), section)).model_fields)


def test_example_matches_defaults_outside_demo_routes() -> None:
    c = load_config(EXAMPLE)
    d = Config()
    # The example spells the health section out; it must say exactly the defaults.
    assert c.model_dump(exclude={"clusters", "routes"}) == d.model_dump(exclude={"clusters", "routes"})


def test_no_file_gives_defaults() -> None:
    c = load_config(None)
    assert c == Config()
    assert c.limits.max_body_bytes == 8 * 1024 * 1024
    assert c.timeouts.default_ms == 3000 and c.timeouts.connect_ms == 1000
    assert c.upstream.connections_per_host == 1 and c.timeouts.ingress_ms == 60000
    assert c.log_level == "info"
    assert c.admin_token is None
    assert (c.drain.grace_s, c.drain.timeout_s) == (3.0, 15.0)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n")) == Config()


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        c.app_port = 1  # type: ignore[misc]


# --- file errors ---------------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "egress: 127.0.0.1:1\nlimits:\n  max_body_bytes: [1, 2\napp_port: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert "line 4" in msg or "line 3" in msg


def test_yaml_tab_error_line(tmp_path: Path) -> None:
    p = write(tmp_path, "egress: x:1\n\tingress: y\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(p)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_errors_carry_the_file_name(tmp_path: Path) -> None:
    p = write(tmp_path, "app_port: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value).startswith(f"{p}: app_port: ")
    assert info.value.source == str(p)


# --- each kind of invalid value names its key ----------------------------------------------------


def test_unknown_keys_named_with_full_path() -> None:
    errors = errors_of({"limits": {"max_bodyy": 1}, "egres": "127.0.0.1:1", **minimal_cluster(wieght=3)})
    assert errors == {
        "limits.max_bodyy": "unknown key",
        "egres": "unknown key",
        "clusters[0].hosts[0].wieght": "unknown key",
    }


def test_bad_host_port_in_nested_list() -> None:
    data = {"clusters": [{"name": "c", "hosts": [{"address": "127.0.0.1:1"}, {"address": "x:99999"}]}]}
    assert one_error(data) == (
        "clusters[0].hosts[1].address",
        "'x:99999' is not HOST:PORT (port must be 1-65535)",
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "missing port"),
        ("127.0.0.1:", "missing port"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:http", "not a number"),
        ("::1:20881", "needs brackets"),
        ("[::1", "unbalanced"),
        ("[127.0.0.1]:1", "only for IPv6"),
        ("[::g]:1", "bad IPv6"),
        ("999.1.1.1:1", "bad IPv4"),
        ("bad host:1", "bad host name"),
        (":1", "missing host"),
        ("", "empty"),
    ],
)
def test_listener_address_errors(value: str, reason: str) -> None:
    key, msg = one_error({"egress": value})
    assert key == "egress"
    assert reason in msg
    assert "is not HOST:PORT" in msg


def test_non_string_address() -> None:
    assert one_error({"api": 8080}) == ("api", "8080 is not HOST:PORT (expected a string)")


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"app_port": 0}, "app_port", "greater than or equal to 1"),
        ({"app_port": 70000}, "app_port", "less than or equal to 65535"),
        ({"app_port": True}, "app_port", "not true"),
        ({"app_port": "x"}, "app_port", "valid integer"),
        ({"limits": {"max_body_bytes": 1023}}, "limits.max_body_bytes", "1024"),
        ({"limits": {"max_body_bytes": 2**31}}, "limits.max_body_bytes", "2147483647"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections", "greater than or equal to 1"),
        ({"limits": {"idle_timeout_s": 0}}, "limits.idle_timeout_s", "greater than 0"),
        ({"timeouts": {"default_ms": 0}}, "timeouts.default_ms", "greater than 0"),
        ({"timeouts": {"connect_ms": -5}}, "timeouts.connect_ms", "greater than 0"),
        ({"upstream": {"connections_per_host": 0}}, "upstream.connections_per_host", "greater than or equal"),
        ({"log_level": "loud"}, "log_level", "not a log level"),
        ({"advertise_ip": "my-host"}, "advertise_ip", "not an IP address"),
        ({"advertise_ip": "0.0.0.0"}, "advertise_ip", "cannot be advertised"),
        ({"data_dir": " "}, "data_dir", "must not be empty"),
        (
            {"discovery": {"empty_protection_s": -1}},
            "discovery.empty_protection_s",
            "greater than or equal to 0",
        ),
        (
            {"discovery": {"empty_protection_s": 301}},
            "discovery.empty_protection_s",
            "less than or equal to 300",
        ),
        ({"discovery": {"empty_protection_s": "5s"}}, "discovery.empty_protection_s", "valid number"),
        ({"discovery": {"empty_hold_s": 5}}, "discovery.empty_hold_s", "unknown key"),
        ({"drain": {"grace_s": -1}}, "drain.grace_s", "greater than or equal to 0"),
        ({"drain": {"grace_s": 301}}, "drain.grace_s", "less than or equal to 300"),
        ({"drain": {"timeout_s": 0}}, "drain.timeout_s", "greater than or equal to 0.1"),
        ({"drain": {"timeout_s": 601}}, "drain.timeout_s", "less than or equal to 600"),
        ({"drain": {"grace_s": True}}, "drain.grace_s", "not true"),
        ({"drain": {"grace": 1}}, "drain.grace", "unknown key"),
        ({"admin_token": ""}, "admin_token", "must not be empty"),
        ({"admin_token": 12345}, "admin_token", "expected a string, not int"),
        ({"admin_token": "two words"}, "admin_token", "without spaces"),
        ({"limits": [1]}, "limits", "valid dictionary"),
        ({"clusters": {"name": "a"}}, "clusters", "valid list"),
    ],
)
def test_scalar_errors_name_their_key(data: dict[str, Any], key: str, fragment: str) -> None:
    k, msg = one_error(data)
    assert k == key
    assert fragment in msg


def test_weights_bounds() -> None:
    assert Config.from_dict(minimal_cluster(weight=0)).clusters[0].hosts[0].weight == 0
    assert Config.from_dict(minimal_cluster(weight=10000)).clusters[0].hosts[0].weight == 10000
    key, msg = one_error(minimal_cluster(weight=10001))
    assert key == "clusters[0].hosts[0].weight" and "10000" in msg
    key, _ = one_error(minimal_cluster(weight=-1))
    assert key == "clusters[0].hosts[0].weight"


def test_metadata_values_must_be_strings() -> None:
    key, _ = one_error(minimal_cluster(metadata={"zone": ["a"]}))
    assert key == "clusters[0].hosts[0].metadata.zone"


def test_load_balancer_names() -> None:
    for lb in LB_NAMES:
        assert Config.from_dict({"clusters": [{"name": "c", "lb": lb}]}).clusters[0].lb == lb
    key, msg = one_error({"clusters": [{"name": "c", "lb": "fastest"}]})
    assert key == "clusters[0].lb"
    assert "'fastest' is not a load balancer" in msg and "least_request" in msg


def test_lb_names_agree_with_routing() -> None:
    from regproxy.routing.balancer import BALANCERS

    assert set(LB_NAMES) == set(BALANCERS)


def test_duplicate_cluster_names() -> None:
    assert one_error({"clusters": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}) == (
        "clusters[2].name",
        "duplicate cluster name 'a' (also clusters[0])",
    )


def test_duplicate_host_in_cluster() -> None:
    data = {"clusters": [{"name": "a", "hosts": [{"address": "[::1]:1"}, {"address": "[0::1]:1"}]}]}
    key, msg = one_error(data)
    assert key == "clusters[0].hosts[1].address" and "duplicate" in msg


def test_route_must_name_existing_cluster() -> None:
    data = {"clusters": [{"name": "a"}], "routes": [{"name": "r", "cluster": "b"}]}
    assert one_error(data) == ("routes[0].cluster", "no cluster named 'b' (known: a)")


def test_duplicate_route_names() -> None:
    data = {
        "clusters": [{"name": "a"}],
        "routes": [{"name": "r", "cluster": "a"}, {"name": "r", "cluster": "a"}],
    }
    key, _ = one_error(data)
    assert key == "routes[1].name"


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ({"name": "r"}, "routes[0].cluster"),
        ({"name": "", "cluster": "a"}, "routes[0].name"),
        ({"name": "r", "cluster": "a", "timeout_ms": 0}, "routes[0].timeout_ms"),
        ({"name": "r", "cluster": "a", "retries": -1}, "routes[0].retries"),
        ({"name": "r", "cluster": "a", "match": {"service": ""}}, "routes[0].match.service"),
        ({"name": "r", "cluster": "a", "match": {"method": ""}}, "routes[0].match.method"),
        ({"name": "r", "cluster": "a", "match": {"servce": "x"}}, "routes[0].match.servce"),
    ],
)
def test_route_field_errors(route: dict[str, Any], key: str) -> None:
    k, _ = one_error({"clusters": [{"name": "a"}], "routes": [route]})
    assert k == key


def test_listener_collisions() -> None:
    assert one_error({"egress": "0.0.0.0:20882"}) == (
        "ingress",
        "0.0.0.0:20882 collides with egress (0.0.0.0:20882)",
    )
    key, msg = one_error({"app_port": 20882})
    assert key == "app_port" and "ingress" in msg
    # Same port on two distinct specific addresses is fine.
    Config.from_dict({"api": "127.0.0.1:9000", "admin": "127.0.0.2:9000"})


def test_every_error_listed_at_once() -> None:
    data = {
        "limits": {"max_bodyy": 1},
        "app_port": 0,
        "clusters": [{"name": "a", "lb": "x", "hosts": [{"address": "nope"}]}],
        "routes": [{"name": "r", "cluster": "missing"}],
        "registries": ["zk://h"],
    }
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    keys = [k for k, _ in info.value.errors]
    assert set(keys) == {
        "limits.max_bodyy",
        "app_port",
        "clusters[0].lb",
        "clusters[0].hosts[0].address",
        "routes[0].cluster",
        "registries[0]",
    }
    text = str(info.value)
    assert text.startswith("6 errors\n")
    for k in keys:
        assert f"\n  {k}: " in text


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "egress: 127.0.0.1:1000\nregistries: [zookeeper://a]\nlimits: {max_connections: 5}\n",
    )
    c = load_config(
        p,
        {
            "egress": "127.0.0.1:2000",
            "registries": ["memory://", "nacos://n"],
            "limits.idle_timeout_s": "2.5",
            "app_port": "30000",
        },
    )
    assert c.egress.port == 2000
    assert [r.scheme for r in c.registries] == ["memory", "nacos"]  # replaced, not appended
    assert c.limits.max_connections == 5 and c.limits.idle_timeout_s == 2.5  # dotted key merges
    assert c.app_port == 30000


def test_override_errors_name_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ingress": "x"}, origins={"ingress": "--ingress"})
    assert info.value.errors == [("ingress", "'x' is not HOST:PORT (missing port) (from --ingress)")]


def test_dotted_override_into_missing_section() -> None:
    c = load_config(None, {"timeouts.default_ms": 10})
    assert c.timeouts.default_ms == 10


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "back"),
    [
        ("127.0.0.1:20880", "127.0.0.1", 20880, "127.0.0.1:20880"),
        ("[::1]:20881", "::1", 20881, "[::1]:20881"),
        ("[fe80::1%eth0]:1", "fe80::1%eth0", 1, "[fe80::1%eth0]:1"),
        ("[0:0::1]:2", "::1", 2, "[::1]:2"),
        ("zk-1.example.internal:2181", "zk-1.example.internal", 2181, "zk-1.example.internal:2181"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        (" provider_1:7 ", "provider_1", 7, "provider_1:7"),
    ],
)
def test_address_parse(text: str, host: str, port: int, back: str) -> None:
    a = Address.parse(text)
    assert (a.host, a.port) == (host, port)
    assert str(a) == back
    assert Address.parse(str(a)) == a


def test_address_default_port() -> None:
    assert parse_address("zk", default_port=2181) == ("zk", 2181)
    assert parse_address("[::1]", default_port=2181) == ("::1", 2181)
    with pytest.raises(ValueError, match="missing port"):
        parse_address("zk")


# --- registry URLs -------------------------------------------------------------------------------


def test_zookeeper_url() -> None:
    r = RegistryURL.parse("zookeeper://zk1,zk2:2182,[::1]")
    assert r.scheme == "zookeeper"
    assert [str(h) for h in r.hosts] == ["zk1:2181", "zk2:2182", "[::1]:2181"]
    assert r.hosts_string == "zk1:2181,zk2:2182,[::1]:2181"
    assert r.params == {}
    assert r.group is None
    assert str(r) == "zookeeper://zk1:2181,zk2:2182,[::1]:2181"


def test_nacos_url_defaults() -> None:
    r = RegistryURL.parse("nacos://nacos")
    assert [str(h) for h in r.hosts] == ["nacos:8848"]
    assert r.namespace == ""
    assert r.group == "DEFAULT_GROUP"
    assert r.username is None and r.password is None


def test_nacos_url_params() -> None:
    r = RegistryURL.parse("NACOS://10.0.0.1:8849/?namespace=dev&group=G1&username=nacos&password=p%40ss%26w")
    assert r.scheme == "nacos"
    assert (r.namespace, r.group, r.username, r.password) == ("dev", "G1", "nacos", "p@ss&w")
    assert r.hosts == (Address("10.0.0.1", 8849),)


def test_memory_url() -> None:
    r = RegistryURL.parse("memory://")
    assert r.scheme == "memory" and r.hosts == () and str(r) == "memory://"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("zk://h", "unknown registry scheme 'zk'"),
        ("h:2181", "not a registry URL"),
        (
            "nacos://h?foo=1",
            "unknown parameter 'foo' for nacos (known: config_center, group, namespace, password, username)",
        ),
        (
            "zookeeper://h?namespace=x",
            "unknown parameter 'namespace' for zookeeper (known: acl, config_center, password, username)",
        ),
        ("nacos://h?group=a&group=b", "given twice"),
        ("nacos://h?password=x", "without username"),
        ("zookeeper://h?password=x", "zookeeper password given without username"),
        ("zookeeper://h?username=u", "username given without password"),
        ("zookeeper://h?username=u:v&password=p", "must not contain ':'"),
        ("zookeeper://h?username=u&password=p&acl=all", "unknown zookeeper acl 'all' (one of world-read"),
        ("zookeeper://h?acl=open", "acl needs username and password"),
        ("nacos://h?group=", "group must not be empty"),
        ("nacos://u:p@h", "credentials go in"),
        ("zookeeper://", "needs at least one HOST"),
        ("zookeeper://h:99999", "port must be 1-65535"),
        ("zookeeper://h/dubbo", "takes no path"),
        ("memory://x", "takes no hosts"),
        ("nacos://h?novalue", "malformed query"),
    ],
)
def test_registry_url_errors(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        RegistryURL.parse(url)
    key, msg = one_error({"registries": ["memory://", url]})
    assert key == "registries[1]"
    assert fragment in msg


def test_registry_must_be_string() -> None:
    assert one_error({"registries": [{"url": "x"}]}) == ("registries[0]", "expected a registry URL string")


# --- redaction -----------------------------------------------------------------------------------


SECRET = "s3cr3t-pw"
NACOS = f"nacos://n:8848?namespace=ns&username=u&password={SECRET}"


def test_password_hidden_in_str_repr_and_dumps() -> None:
    r = RegistryURL.parse(NACOS)
    assert SECRET not in str(r)
    assert SECRET not in repr(r)
    assert "password=***" in str(r)
    assert r.to_url(redact=False) == "nacos://n:8848?namespace=ns&password=s3cr3t-pw&username=u"

    c = Config.from_dict({"registries": [NACOS]})
    assert c.registries[0].password == SECRET
    dumped = c.redacted_dict()
    assert dumped["registries"] == ["nacos://n:8848?namespace=ns&password=***&username=u"]
    for text in (repr(c), str(c), str(dumped), c.model_dump_json()):
        assert SECRET not in text


def test_secrets_revealed_only_on_request_and_round_trip() -> None:
    c = Config.from_dict({"registries": [NACOS]})
    full = c.model_dump(mode="json", context={"reveal_secrets": True})
    assert SECRET in full["registries"][0]
    assert Config.from_dict(full) == c


def test_password_never_in_error_messages() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"registries": [f"nacos://h?password={SECRET}&bogus=1"]})
    assert SECRET not in str(info.value)


TOKEN = "adm1n-t0ken_~+/="


def test_admin_token_hidden_in_str_repr_and_dumps() -> None:
    c = Config.from_dict({"admin_token": TOKEN})
    assert c.admin_token == TOKEN
    dumped = c.redacted_dict()
    assert dumped["admin_token"] == "***"
    for text in (repr(c), str(c), str(dumped), c.model_dump_json(), str(c.model_dump())):
        assert TOKEN not in text
    full = c.model_dump(mode="json", context={"reveal_secrets": True})
    assert full["admin_token"] == TOKEN
    assert Config.from_dict(full) == c
    # No token stays null in dumps (not "***": nothing is hidden).
    assert Config().redacted_dict()["admin_token"] is None


@pytest.mark.parametrize("bad", [f"{TOKEN} x", f"{TOKEN}\n", f"{TOKEN}\u00e9"])
def test_admin_token_never_in_error_messages(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"admin_token": bad})
    assert info.value.errors[0][0] == "admin_token"
    assert TOKEN not in str(info.value)


def test_drain_settings_from_file(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "drain: {grace_s: 0, timeout_s: 0.5}\nadmin_token: 'abc'\n"))
    assert (c.drain.grace_s, c.drain.timeout_s) == (0.0, 0.5)
    assert c.admin_token == "abc"
    c = load_config(None, {"drain.grace_s": "1.5"})
    assert c.drain.grace_s == 1.5 and c.drain.timeout_s == 15.0


def test_empty_protection_default_file_and_off(tmp_path: Path) -> None:
    assert Config().discovery.empty_protection_s == 5.0
    c = load_config(write(tmp_path, "discovery: {empty_protection_s: 0.5}\n"))
    assert c.discovery.empty_protection_s == 0.5
    assert load_config(None, {"discovery.empty_protection_s": "0"}).discovery.empty_protection_s == 0.0


def test_redacted_dict_is_json_ready() -> None:
    import json

    d = load_config(EXAMPLE).redacted_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["egress"] == "127.0.0.1:20881"
    assert d["clusters"][0]["hosts"][0]["address"] == "greetings-provider.example:20882"


# --- to the routing table ------------------------------------------------------------------------


def test_to_routing_table() -> None:
    from regproxy.routing.model import Cluster, Host, Route, RouteMatch

    c = Config.from_dict(
        {
            "clusters": [
                {
                    "name": "greet",
                    "lb": "weighted_round_robin",
                    "hosts": [
                        {"address": "127.0.0.1:20882", "weight": 5, "metadata": {"zone": "a"}},
                        {"address": "[::1]:20882"},
                    ],
                },
                {"name": "other"},
            ],
            "routes": [
                {
                    "name": "g",
                    "match": {"service": "com.x.Greet", "version": "0.0.0", "group": "g", "method": "hi"},
                    "cluster": "greet",
                    "timeout_ms": 500,
                    "retries": 0,
                },
                {"name": "rest", "cluster": "other"},
            ],
        }
    )
    table = static_table(c)
    assert table.routes == (
        Route(
            name="g",
            match=RouteMatch(service="com.x.Greet", version="", group="g", method="hi"),
            cluster="greet",
            timeout_ms=500,
            retries=0,
        ),
        Route(name="rest", match=RouteMatch(), cluster="other", timeout_ms=None, retries=1),
    )
    greet = table.clusters["greet"]
    assert isinstance(greet, Cluster)
    assert greet.lb == "weighted_round_robin"
    assert greet.hosts == (
        Host(address="127.0.0.1:20882", weight=5, metadata={"zone": "a"}),
        Host(address="[::1]:20882", weight=100),
    )
    assert dict(greet.hosts[0].metadata) == {"zone": "a"}
    assert table.clusters["other"].hosts == ()
    assert table.match("com.x.Greet", "0.0.0", "hi", "g") == table.routes[0]
    assert table.match("com.y.Other", "", "m", None) == table.routes[1]


def test_example_to_routing_table() -> None:
    table = static_table(load_config(EXAMPLE))
    route = table.match("org.apache.dubbo.samples.api.GreetingsService", "0.0.0", "greet", None)
    assert route is not None and route.cluster == "greetings"
    assert [h.address for h in table.clusters["greetings"].hosts] == ["greetings-provider.example:20882"]


# --- every invalid value names its key -----------------------------------------------------------
# A valid config with every section and key filled in; each test below breaks one key of it and
# expects an error listed under exactly that key. The keys come from walking this config, so a new
# section added here is covered by the type checks without another line.

FULL: dict[str, Any] = {
    "egress": "127.0.0.1:20881",
    "ingress": "0.0.0.0:20882",
    "api": "127.0.0.1:22222",
    "admin": "127.0.0.1:34901",
    "admin_token": "s3cret-token",
    "auth_token": "another-s3cret",
    "api_allow_remote": False,
    "admin_allow_remote": False,
    "app_port": 20880,
    "advertise_ip": "10.0.0.7",
    "data_dir": "/var/lib/regproxy",
    "registries": ["zookeeper://zk1:2181,zk2", "nacos://n1:8848?namespace=dev&username=u&password=p"],
    "limits": {"max_body_bytes": 8388608, "max_connections": 10000, "idle_timeout_s": 300},
    "timeouts": {"default_ms": 3000, "connect_ms": 1000, "ingress_ms": 60000},
    "upstream": {"connections_per_host": 1},
    "drain": {"grace_s": 3.0, "timeout_s": 15.0},
    "log_level": "info",
    "clusters": [
        {"name": "c", "lb": "round_robin",
         "hosts": [{"address": "10.0.0.1:20882", "weight": 100, "metadata": {"env": "gray"}}]}
    ],
    "routes": [
        {"name": "plain", "match": {"service": "com.x.A", "version": "1.0", "group": "g", "method": "m"},
         "cluster": "c", "timeout_ms": 500, "retries": 1},
        {
            "name": "rule",
            "match": {"service": {"prefix": "com.x."}, "method": {"regex": "say.*"},
                      "attachments": {"x-env": {"exact": "gray"}, "x-id": {"present": True}}},
            "route": {"cluster": "c", "weighted_subsets": [{"subset": {"env": "gray"}, "weight": 20}],
                      "timeout": "3s", "retry": {"attempts": 2, "on": ["connect-failure", "reset"]}},
            "fault": {"delay": {"fixed": "100ms", "percentage": 10},
                      "abort": {"status": 70, "message": "drill", "percentage": 5}},
            "rate_limit": {"requests_per_second": 100, "burst": 200, "per": "method"},
        },
    ],
    "access_log": "/var/log/regproxy-access.log",
    "health": {
        "active": {"interval_s": 5, "timeout_s": 1, "unhealthy_threshold": 3, "healthy_threshold": 2,
                   "enabled": True},
        "outlier": {"consecutive_failures": 5, "base_ejection_s": 10, "max_ejection_s": 300,
                    "max_ejection_percent": 50, "enabled": True},
        "app_check": {"interval_s": 2, "timeout_s": 1, "failures": 2, "enabled": True},
    },
}  # fmt: skip


def _leaves(node: Any, path: str = "") -> list[tuple[str, tuple[str | int, ...], Any]]:
    """(key path as errors spell it, location in FULL, value) for every scalar, list and mapping."""
    out: list[tuple[str, tuple[str | int, ...], Any]] = []

    def walk(value: Any, shown: str, loc: tuple[str | int, ...]) -> None:
        if loc:
            out.append((shown, loc, value))
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{shown}.{k}" if shown else k, (*loc, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{shown}[{i}]", (*loc, i))

    walk(node, path, ())
    return out


# Values of the wrong type for a key of each type: wrong for every key of that type.
_WRONG_TYPE: dict[type, list[Any]] = {
    bool: ["yes please", 2, [True], {"a": 1}],
    int: ["many", True, [1], {"a": 1}, 1.5],
    float: ["long", True, [1.0], {"a": 1}],
    str: [5, [1], {"a": 1}, True],
    list: ["x", 5, {"a": 1}],
    dict: ["x", 5, [1]],
}
# Keys whose type admits some of those values (a number for a duration, a list for a string
# match's mapping form...) and what of the list above they take.
_TAKES: dict[str, tuple[Any, ...]] = {
    "routes[1].route.timeout": (1.5, 5),  # a number is a duration in ms
    "routes[1].fault.delay.fixed": (5,),
    "routes[1].match.service": ("x",),  # a name, or a {prefix: ...} mapping
    "routes[1].match.method": ("x",),
    "access_log": (True,),  # true = the process log
}


def _with(loc: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(FULL)
    node: Any = data
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value
    return data


def _cases() -> list[Any]:
    cases = []
    for shown, loc, value in _leaves(FULL):
        kind = type(value)
        if kind is int and (
            shown.startswith(("health.", "limits.idle", "drain.", "routes[1].rate_limit.req"))
            or shown.endswith("percentage")
        ):
            kind = float  # seconds, rates and percentages take fractions too
        for bad in _WRONG_TYPE[kind]:
            if any(bad == ok and type(bad) is type(ok) for ok in _TAKES.get(shown, ())):
                continue
            cases.append(pytest.param(loc, bad, shown, id=f"{shown}={bad!r}"))
    return cases


def _named(errors: dict[str, str], key: str) -> list[str]:
    """The errors listed under ``key`` or a key inside it (``metadata.env`` names ``metadata``)."""
    return [k for k in errors if k == key or k.startswith((f"{key}.", f"{key}["))]


def test_full_config_is_valid() -> None:
    Config.from_dict(FULL)


@pytest.mark.parametrize(("loc", "bad", "key"), _cases())
def test_every_wrong_type_names_its_key(loc: tuple[str | int, ...], bad: Any, key: str) -> None:
    errors = errors_of(_with(loc, bad))
    named = _named(errors, key)
    assert named, f"{key}={bad!r}: errors name {sorted(errors)}"
    for k in named:
        assert errors[k] and "function-" not in k + errors[k], (k, errors[k])


# Values of the right type that break a key's own rule, for every key that has one.
_OUT_OF_RANGE: list[tuple[str, list[Any]]] = [
    ("egress", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "host name:1", "[::1:1", ""]),
    ("ingress", ["0.0.0.0:x", ":20882"]),
    ("api", ["999.1.1.1:1", "10.0.0.1:22222"]),  # the second: remote without api_allow_remote
    ("admin", ["[fe80::zz]:1", "0.0.0.0:34901"]),
    ("admin_token", ["", "has space", "tab\tin", "\u00e9t\u00e9"]),
    ("auth_token", ["", "has space", "\u00e9t\u00e9"]),
    ("app_port", [0, -1, 65536]),
    ("advertise_ip", ["not-an-ip", "0.0.0.0", "::", "300.1.1.1"]),
    ("data_dir", ["", "   "]),
    (
        "registries[0]",
        ["zk://h", "zookeeper://", "zookeeper://h:0", "nacos://h?colour=red", "memory://h", ""],
    ),
    ("limits.max_body_bytes", [0, 1023, 2**31]),
    ("limits.max_connections", [0, -5]),
    ("limits.idle_timeout_s", [0, -1]),
    ("timeouts.default_ms", [0, -1]),
    ("timeouts.connect_ms", [0]),
    ("timeouts.ingress_ms", [0]),
    ("upstream.connections_per_host", [0, 1025]),
    ("drain.grace_s", [-0.1, 301]),
    ("drain.timeout_s", [0, 0.05, 601]),
    ("log_level", ["loud", ""]),
    ("clusters[0].name", ["", " "]),
    ("clusters[0].lb", ["fastest", ""]),
    ("clusters[0].hosts[0].address", ["10.0.0.1", "10.0.0.1:0", "x y:1"]),
    ("clusters[0].hosts[0].weight", [-1, 10001]),
    ("clusters[0].hosts[0].metadata", [{"env": 5}, {"env": None}]),
    ("routes[0].name", ["", " "]),
    ("routes[0].match.service", ["", {"exact": "a", "prefix": "b"}, {}, {"regex": "("}, {"glob": "*"}]),
    ("routes[0].match.method", ["", {"regex": "[z-a]"}]),
    ("routes[0].cluster", ["nowhere"]),
    ("routes[0].timeout_ms", [0, -1]),
    ("routes[0].retries", [-1, 11]),
    (
        "routes[1].match.attachments",
        [{"k": {}}, {"k": {"present": False}}, {"k": {"exact": "a", "regex": "b"}}],
    ),
    ("routes[1].route.cluster", ["", 5]),  # another name may be a subscription's cluster: not checked
    ("routes[1].route.weighted_subsets", [[{"subset": {"env": "a"}, "weight": 0}]]),
    ("routes[1].route.weighted_subsets[0].weight", [-1, 10001]),
    ("routes[1].route.timeout", ["soon", "0s", -5, "3h", "1.5.s"]),
    ("routes[1].route.retry.attempts", [-1, 11]),
    ("routes[1].route.retry.on", [["sometimes"], ["reset", "never"]]),
    ("routes[1].fault.delay.fixed", ["0ms", "later", -1]),
    ("routes[1].fault.delay.percentage", [-1, 100.5]),
    ("routes[1].fault.abort.status", [20, 0, 256]),
    ("routes[1].fault.abort.percentage", [101]),
    ("routes[1].rate_limit.requests_per_second", [0, -1]),
    ("routes[1].rate_limit.burst", [0]),
    ("routes[1].rate_limit.per", ["host"]),
    ("health.active.interval_s", [0, -1]),
    ("health.active.unhealthy_threshold", [0, 1.5]),
    ("health.outlier.max_ejection_percent", [101, 0]),
    ("health.outlier.consecutive_failures", [0]),
    ("health.app_check.failures", [0, 2.5]),
    ("health.app_check.enabled", ["yes", 1]),
]


def _range_cases() -> list[Any]:
    locs = {shown: loc for shown, loc, _ in _leaves(FULL)}
    return [
        pytest.param(locs[key], bad, key, id=f"{key}={bad!r}")
        for key, values in _OUT_OF_RANGE
        for bad in values
    ]


def test_range_table_covers_every_section() -> None:
    sections = {re.split(r"[.\[]", key)[0] for key, _ in _OUT_OF_RANGE}
    # access_log: any path or a bool; the *_allow_remote booleans: any bool (their rule is the
    # remote api/admin address above).
    free = {"access_log", "api_allow_remote", "admin_allow_remote"}
    assert sections == set(FULL) - free, set(FULL) - sections


@pytest.mark.parametrize(("loc", "bad", "key"), _range_cases())
def test_every_invalid_value_names_its_key(loc: tuple[str | int, ...], bad: Any, key: str) -> None:
    errors = errors_of(_with(loc, bad))
    named = _named(errors, key)
    assert named, f"{key}={bad!r}: errors name {sorted(errors)}"
    for k in named:
        assert errors[k] and "function-" not in k + errors[k], (k, errors[k])
    if key in ("admin_token", "registries[1]"):
        assert "s3cret" not in str(errors) and "=p" not in str(errors)  # secrets never in a message


# --- YAML 1.2 scalars and duplicate keys (regproxy/yamlio.py), through load_config --------------


def fenced_yaml(doc: Path, containing: str) -> str:
    """The ```yaml block of ``doc`` that contains ``containing``."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", doc.read_text(), re.M | re.S)
    (block,) = [b for b in blocks if containing in b]
    return str(block)


RETRY_EXAMPLE = "retry: {attempts: 2, on: [connect-failure, reset, unavailable]}"


def assert_retry_example(c: Config, route: str) -> None:
    (r,) = [r for r in c.routes if r.name == route]
    assert r.route is not None and r.route.retry is not None
    assert (r.route.retry.attempts, r.route.retry.on) == (2, ["connect-failure", "reset", "unavailable"])


def test_readme_route_rule_example_loads(tmp_path: Path) -> None:
    # It was refused: YAML 1.1 read `on` as the key True ("Keys should be strings (got True)").
    block = fenced_yaml(ROOT / "README.md", RETRY_EXAMPLE)
    assert_retry_example(load_config(write(tmp_path, block)), "greet-canary")


def test_reliability_doc_config_loads(tmp_path: Path) -> None:
    block = fenced_yaml(ROOT / "docs" / "reliability.md", RETRY_EXAMPLE)
    assert_retry_example(load_config(write(tmp_path, block)), "greet-retry")


def test_example_files_commented_rule_loads(tmp_path: Path) -> None:
    # conf/regproxy.yaml shows the rule commented out, under the file's own routes: uncommented and
    # added to them, it loads.
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("#  - name: greet-canary")
    rule = []
    for line in lines[start:]:
        if not line.startswith("#  "):
            break
        rule.append(line[1:])
    text = EXAMPLE.read_text().replace("\nroutes:\n", "\nroutes:\n" + "\n".join(rule) + "\n", 1)
    c = load_config(write(tmp_path, text))
    assert_retry_example(c, "greet-canary")
    assert [r.name for r in c.routes] == ["greet-canary", "greetings"]


YAML_1_1_TRAPS = ["on", "off", "yes", "no", "y", "n", "On", "OFF", "Yes", "NO", "1_000", "1:20", "0b101"]


@pytest.mark.parametrize("word", YAML_1_1_TRAPS)
def test_yaml_1_1_booleans_and_numbers_stay_strings(tmp_path: Path, word: str) -> None:
    # YAML 1.1 made these booleans or numbers, and a string field refused them.
    p = write(
        tmp_path,
        f"clusters:\n  - name: c\n    hosts: [{{address: '127.0.0.1:1', metadata: {{m: {word}}}}}]\n"
        f"routes:\n  - {{name: r, cluster: c, match: {{version: {word}}}}}\n",
    )
    c = load_config(p)
    assert c.clusters[0].hosts[0].metadata == {"m": word}
    assert c.routes[0].match.version == word


@pytest.mark.parametrize(("text", "port"), [("010", 10), ("0o17", 15), ("0x1F", 31), ("20880", 20880)])
def test_integers_are_yaml_1_2(tmp_path: Path, text: str, port: int) -> None:
    assert load_config(write(tmp_path, f"app_port: {text}\n")).app_port == port  # 010: not octal 8


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("egress: 127.0.0.1:1\napp_port: 3\negress: 127.0.0.1:2\n", 3, "egress", 1),
        (
            "limits:\n  max_connections: 5\n  idle_timeout_s: 1\n  max_connections: 6\n",
            4,
            "max_connections",
            2,
        ),
        ("routes:\n  - name: r\n    cluster: c\n    name: s\n", 4, "name", 2),
        ("tls: {enabled: false, enabled: true}\n", 1, "enabled", 1),
    ],
)
def test_duplicate_keys_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, first: int
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: line {line}: duplicate key {key!r} (first given on line {first})"
    assert info.value.source == str(p)


def test_dumped_config_loads_back_identically(tmp_path: Path) -> None:
    # What --print-config writes (yamlio.dump of redacted_dict) is the same config read back, strings
    # that look like booleans or numbers included.
    from regproxy import yamlio

    traps = {word: word for word in [*YAML_1_1_TRAPS, "0o17", "0x1F", "010", "1e3", "true", "null", ""]}
    data = {
        "app_port": 20990,
        "access_log": "on",
        "clusters": [{"name": "yes", "hosts": [{"address": "127.0.0.1:1", "metadata": traps}]}],
        "routes": [
            {"name": "no", "cluster": "yes", "match": {"service": "on", "version": "1.10", "group": "0o17"}}
        ],
    }
    c = Config.from_dict(data)
    text = yamlio.dump(c.redacted_dict())
    assert load_config(write(tmp_path, text)) == c
    assert "access_log: 'on'" in text


# --- where a value came from: a flag only when it was given ---------------------------------------

ALL_FLAGS = {
    "registries": "--registry",
    "log_level": "--log-level",
    "app_port": "--app-port",
    "egress": "--egress",
}


def test_file_errors_name_the_file_not_a_flag_that_was_not_given(tmp_path: Path) -> None:
    p = write(tmp_path, "registries: ['zk://h']\nlog_level: loud\napp_port: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, {}, origins=ALL_FLAGS)  # the cli knows every flag; none was given
    assert info.value.source == str(p)
    assert "(from" not in str(info.value)
    assert set(dict(info.value.errors)) == {"registries[0]", "log_level", "app_port"}


def test_a_flag_error_names_the_flag_and_file_errors_do_not(tmp_path: Path) -> None:
    p = write(tmp_path, "log_level: loud\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, {"registries": ["zk://h"]}, origins=ALL_FLAGS)
    errors = dict(info.value.errors)
    assert errors["registries[0]"].endswith("(from --registry)")
    assert "(from" not in errors["log_level"]


# --- a loopback ingress with an advertised address -----------------------------------------------


@pytest.mark.parametrize("ingress", ["127.0.0.1:20882", "localhost:20882", "[::1]:20882", "127.0.0.2:20882"])
def test_loopback_ingress_with_a_non_loopback_advertise_ip_is_refused(ingress: str) -> None:
    key, problem = one_error({"ingress": ingress, "advertise_ip": "10.0.0.7"})
    assert key == "advertise_ip"
    assert "10.0.0.7" in problem and f"ingress ({ingress})" in problem and "loopback" in problem
    assert "advertise_ip to null" in problem


def test_loopback_advertise_ip_flag_is_named() -> None:
    flags = {"ingress": "127.0.0.1:30000", "advertise_ip": "192.0.2.2"}
    with pytest.raises(ConfigError) as info:
        load_config(None, flags, origins={"ingress": "--ingress", "advertise_ip": "--advertise-ip"})
    ((key, problem),) = info.value.errors
    assert key == "advertise_ip" and problem.endswith("(from --advertise-ip)") and "ingress (" in problem


@pytest.mark.parametrize(
    ("ingress", "advertise_ip"),
    [
        ("127.0.0.1:20882", None),  # the sidecar advertises 127.0.0.1 (tests/test_sidecar_run.py)
        ("127.0.0.1:20882", "127.0.0.1"),
        ("[::1]:20882", "::1"),
        ("0.0.0.0:20882", "10.0.0.7"),
        ("10.0.0.7:20882", "10.0.0.7"),
        ("myhost:20882", "10.0.0.7"),  # a name may resolve to anything
    ],
)
def test_other_ingress_and_advertise_ip_pairs_are_accepted(ingress: str, advertise_ip: str | None) -> None:
    Config.from_dict({"ingress": ingress, "advertise_ip": advertise_ip})
