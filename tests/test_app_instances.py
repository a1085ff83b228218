"""Dubbo 3 application-level instances, their metadata and the service-name mapping.

What regproxy.registry.instances reads and writes.

No Java here, so the fixtures are written out by hand from the sources that produce them; each says
which file a fact comes from (apache/dubbo branch 3.3, apache/curator 5.7, apache/dubbo-go).
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from regproxy.registry.instances import (
    EMPTY_REVISION,
    ENDPOINTS_KEY,
    LOCAL,
    METADATA_SERVICE_V2,
    METADATA_VERSION_KEY,
    REMOTE,
    REVISION_KEY,
    STORAGE_TYPE_KEY,
    URL_PARAMS_KEY,
    AppInstance,
    Endpoint,
    InstanceError,
    instance_metadata,
    instance_path,
    instances_path,
    mapping_apps,
    mapping_path,
    mapping_with,
    metadata_service_params,
    nacos_mapping_config,
    nacos_mapping_ticket,
    parse_curator,
    to_curator,
)

APP = "demo-provider"

# The data of /services/demo-provider/192.168.1.9:20880 as a Dubbo 3.3 provider writes it:
# * property order and "sslPort"/"uriSpec" null, no "enabled": Curator JsonInstanceSerializer(Class)
#   -> compatibleSerializationMode = true -> OldServiceInstance's fields, in declaration order, Jackson
#   compact output; "serviceType":"DYNAMIC" is ServiceInstanceBuilder's default;
# * "@class" first: @JsonTypeInfo(use = CLASS) on ServiceInstance.getPayload;
# * payload id/name/metadata: ZookeeperInstance's fields; id = host:port (CuratorFrameworkUtils.generateId);
# * metadata keys sorted: CuratorFrameworkUtils.build uses DefaultServiceInstance.getSortedMetadata (TreeMap);
# * dubbo.endpoints: ProtocolPortsMetadataCustomizer -> ServiceInstanceMetadataUtils.setEndpoints
#   (DefaultServiceInstance.Endpoint {port, protocol});
# * dubbo.metadata-service.url-params: MetadataServiceURLParamsMetadataCustomizer ->
#   ServiceInstanceMetadataUtils.getMetadataServiceParameter (DEFAULT_REGISTER_PROVIDER_KEYS order, then
#   port and protocol), plus "meta-v" = MetadataServiceDelegation.VERSION;
# * dubbo.metadata.storage-type: AbstractServiceDiscovery.createServiceInstance (default "local").
JAVA_INSTANCE = (
    rb'{"name":"demo-provider","id":"192.168.1.9:20880","address":"192.168.1.9","port":20880,"sslPort":null,'
    rb'"payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"192.168.1.9:20880",'
    rb'"name":"demo-provider","metadata":{"dubbo.endpoints":"[{\"port\":20880,\"protocol\":\"dubbo\"}]",'
    rb'"dubbo.metadata-service.url-params":"{\"connections\":\"1\",\"version\":\"1.0.0\",\"dubbo\":\"2.0.2\",'
    rb'\"release\":\"3.3.0\",\"side\":\"provider\",\"port\":\"20880\",\"protocol\":\"dubbo\"}",'
    rb'"dubbo.metadata.revision":"a662fd2213a8a49dc6ff43a4c2ae7b9e","dubbo.metadata.storage-type":"local",'
    rb'"meta-v":"1.0.0","timestamp":"1733312345678"}},"registrationTimeUTC":1733312346012,'
    rb'"serviceType":"DYNAMIC","uriSpec":null}'
)

# The same instance as `zkCli get` shows it when written with Jackson's INDENT_OUTPUT (as in Dubbo's
# documentation): blanks and line breaks must not matter.
JAVA_INSTANCE_INDENTED = b"""{
  "name" : "demo-provider",
  "id" : "192.168.1.9:20880",
  "address" : "192.168.1.9",
  "port" : 20880,
  "sslPort" : null,
  "payload" : {
    "@class" : "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
    "id" : "192.168.1.9:20880",
    "name" : "demo-provider",
    "metadata" : {
      "dubbo.endpoints" : "[{\\"port\\":20880,\\"protocol\\":\\"dubbo\\"}]",
      "dubbo.metadata-service.url-params" : "{\\"connections\\":\\"1\\",\\"version\\":\\"1.0.0\\",\\"dubbo\\":\\"2.0.2\\",\\"release\\":\\"3.3.0\\",\\"side\\":\\"provider\\",\\"port\\":\\"20880\\",\\"protocol\\":\\"dubbo\\"}",
      "dubbo.metadata.revision" : "a662fd2213a8a49dc6ff43a4c2ae7b9e",
      "dubbo.metadata.storage-type" : "local",
      "meta-v" : "1.0.0",
      "timestamp" : "1733312345678"
    }
  },
  "registrationTimeUTC" : 1733312346012,
  "serviceType" : "DYNAMIC",
  "uriSpec" : null
}"""  # noqa: E501  (one line per JSON property, as Jackson prints it)

# A dubbo-go 3.x provider serving triple, as registry/zookeeper toCuratorInstance writes it with
# remoting/zookeeper/curator_discovery.ServiceInstance (Go encoding/json: struct field order, omitempty,
# so no sslPort/serviceType/uriSpec and registrationTimeUTC 0 left out; the payload and metadata are Go
# maps, so their keys come sorted).  Metadata keys: dubbo-go common/constant/key.go; the url-params map
# is built by metadataServiceURLParamsMetadataCustomizer.convertToParams (port, protocol added).
GO_INSTANCE = (
    rb'{"name":"go-provider","id":"10.0.0.7:20000","address":"10.0.0.7","port":20000,'
    rb'"payload":{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"10.0.0.7:20000",'
    rb'"metadata":{"dubbo.endpoints":"[{\"port\":20000,\"protocol\":\"tri\"}]",'
    rb'"dubbo.metadata-service.url-params":"{\"dubbo\":\"2.0.2\",\"port\":\"20000\",\"protocol\":\"tri\",'
    rb'\"release\":\"3.1.0\",\"side\":\"provider\",\"version\":\"1.0.0\"}",'
    rb'"dubbo.metadata.revision":"3412793392","dubbo.metadata.storage-type":"local",'
    rb'"timestamp":"1733312000000"},"name":"go-provider"}}'
)


def _fixture() -> dict[str, Any]:
    return json.loads(JAVA_INSTANCE)


# -- reading ---------------------------------------------------------------------------------------------


def test_java_instance_is_read() -> None:
    instance = parse_curator(JAVA_INSTANCE, app=APP)
    assert (instance.app, instance.host, instance.port) == (APP, "192.168.1.9", 20880)
    assert instance.id == "192.168.1.9:20880"
    assert instance.registration_time_utc == 1733312346012
    assert instance.revision == "a662fd2213a8a49dc6ff43a4c2ae7b9e"
    assert instance.storage_type == LOCAL
    assert instance.metadata_service_version == "1.0.0"
    assert instance.endpoints == (Endpoint(20880, "dubbo"),)
    assert instance.port_for("dubbo") == 20880
    # A protocol without an endpoint falls back to the instance port
    # (ServiceInstancesChangedListener.getServiceUrlsCache).
    assert instance.port_for("tri") == 20880
    assert instance.metadata_service_params is not None
    assert list(instance.metadata_service_params.items()) == [
        ("connections", "1"),
        ("version", "1.0.0"),
        ("dubbo", "2.0.2"),
        ("release", "3.3.0"),
        ("side", "provider"),
        ("port", "20880"),
        ("protocol", "dubbo"),
    ]
    assert instance.metadata_service_address() == ("dubbo", 20880)
    assert instance.metadata["timestamp"] == "1733312345678"
    assert list(instance.metadata) == sorted(instance.metadata)


def test_indented_json_reads_the_same() -> None:
    assert parse_curator(JAVA_INSTANCE_INDENTED, app=APP) == parse_curator(JAVA_INSTANCE, app=APP)


def test_dubbo_go_instance_is_read() -> None:
    instance = parse_curator(GO_INSTANCE, app="go-provider")
    assert (instance.host, instance.port, instance.id) == ("10.0.0.7", 20000, "10.0.0.7:20000")
    assert instance.registration_time_utc == 0
    assert instance.revision == "3412793392"
    assert instance.port_for("tri") == 20000
    assert instance.metadata_service_address() == ("tri", 20000)
    assert instance.metadata_service_version is None  # dubbo-go 3.1 writes no meta-v


def test_payload_without_class_is_read() -> None:
    # dubbo-go before it copied Java's "@class" (registry/zookeeper toCuratorInstance) wrote none.
    raw = _fixture()
    del raw["payload"]["@class"]
    assert parse_curator(json.dumps(raw).encode(), app=APP) == parse_curator(JAVA_INSTANCE, app=APP)


def test_unknown_properties_are_ignored() -> None:
    # JsonInstanceSerializer sets FAIL_ON_UNKNOWN_PROPERTIES false; Curator's non-compatible mode adds
    # "enabled" (ServiceInstance.isEnabled), which Dubbo's ServiceCache does not look at.
    raw = _fixture()
    raw["enabled"] = False
    raw["payload"]["extra"] = {"x": 1}
    assert parse_curator(json.dumps(raw).encode(), app=APP) == parse_curator(JAVA_INSTANCE, app=APP)


def test_several_protocols_each_have_their_port() -> None:
    instance = AppInstance(
        APP,
        "192.168.1.9",
        20880,
        {ENDPOINTS_KEY: '[{"port":20880,"protocol":"dubbo"},{"port":50051,"protocol":"tri"}]'},
    )
    assert instance.port_for("dubbo") == 20880
    assert instance.port_for("tri") == 50051
    assert instance.port_for("rest") == 20880


@pytest.mark.parametrize(
    ("metadata", "revision", "storage"),
    [
        ({}, None, LOCAL),
        ({REVISION_KEY: ""}, None, LOCAL),
        # EMPTY_REVISION: the instance exports nothing (RevisionResolver; skipped by
        # ServiceInstancesChangedListener.onEvent).
        ({REVISION_KEY: EMPTY_REVISION}, None, LOCAL),
        ({REVISION_KEY: "r1", STORAGE_TYPE_KEY: REMOTE}, "r1", REMOTE),
        # Anything but "remote" asks the instance (MetadataUtils.getRemoteMetadata).
        ({REVISION_KEY: "r1", STORAGE_TYPE_KEY: "Remote"}, "r1", LOCAL),
        ({REVISION_KEY: "r1", STORAGE_TYPE_KEY: LOCAL}, "r1", LOCAL),
    ],
)
def test_revision_and_storage_type(metadata: dict[str, str], revision: str | None, storage: str) -> None:
    instance = AppInstance(APP, "10.0.0.1", 20880, metadata)
    assert instance.revision == revision
    assert instance.storage_type == storage


def test_without_url_params_the_metadata_service_is_dubbo_on_the_instance_port() -> None:
    # StandardMetadataServiceURLBuilder.generateUrlWithoutMetadata.
    instance = AppInstance(APP, "10.0.0.1", 20881, {URL_PARAMS_KEY: " "})
    assert instance.metadata_service_params is None
    assert instance.metadata_service_address() == ("dubbo", 20881)


def test_metadata_service_v2_is_named() -> None:
    instance = AppInstance(APP, "10.0.0.1", 20880, {METADATA_VERSION_KEY: METADATA_SERVICE_V2})
    assert instance.metadata_service_version == "2.0.0"


_DELETE = object()


def _mutated(path: tuple[str, ...], value: object) -> bytes:
    raw = _fixture()
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(raw).encode()


_META = ("payload", "metadata")
_EP = f"payload.metadata[{ENDPOINTS_KEY}]"
_UP = f"payload.metadata[{URL_PARAMS_KEY}]"
# Spring Cloud Zookeeper's payload: same fields, but JsonInstanceSerializer's cast to Dubbo's class fails.
_SPRING_CLOUD_PAYLOAD = "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "(data)"),
        (b"\xff\xfe{}", "(data)"),
        (b"", "(data)"),
        (b"[]", "(data)"),
        (b"null", "(data)"),
        (b"[" * 100_000, "(data)"),  # nesting deeper than the parser goes
        (_mutated(("name",), _DELETE), "name"),
        (_mutated(("name",), 5), "name"),
        (_mutated(("name",), "other-app"), "name"),  # not the folder it was found in
        (_mutated(("name",), ""), "name"),
        (_mutated(("address",), _DELETE), "address"),
        (_mutated(("address",), None), "address"),
        (_mutated(("address",), ""), "address"),
        (_mutated(("address",), ["192.168.1.9"]), "address"),
        (_mutated(("port",), _DELETE), "port"),
        (_mutated(("port",), "20880"), "port"),
        (_mutated(("port",), True), "port"),
        (_mutated(("port",), 20880.5), "port"),
        (_mutated(("port",), 0), "port"),  # ServiceInstanceMetadataUtils.isValidInstance
        (_mutated(("port",), 65536), "port"),
        (_mutated(("port",), -1), "port"),
        (_mutated(("id",), 7), "id"),
        (_mutated(("sslPort",), "443"), "sslPort"),
        (_mutated(("serviceType",), "LIVE"), "serviceType"),
        (_mutated(("serviceType",), 1), "serviceType"),
        (_mutated(("registrationTimeUTC",), "yesterday"), "registrationTimeUTC"),
        (_mutated(("payload",), _DELETE), "payload"),
        (_mutated(("payload",), None), "payload"),
        (_mutated(("payload",), "x"), "payload"),
        (_mutated(("payload", "@class"), _SPRING_CLOUD_PAYLOAD), "payload.@class"),
        (_mutated(_META, []), "payload.metadata"),
        (_mutated((*_META, "timestamp"), 1733312345678), "payload.metadata[timestamp]"),
        (_mutated((*_META, "timestamp"), None), "payload.metadata[timestamp]"),
        (_mutated((*_META, ENDPOINTS_KEY), "[{"), _EP),
        (_mutated((*_META, ENDPOINTS_KEY), "[" * 100_000), _EP),
        (_mutated((*_META, ENDPOINTS_KEY), '{"port":20880}'), _EP),
        (_mutated((*_META, ENDPOINTS_KEY), "[20880]"), f"{_EP}[0]"),
        (_mutated((*_META, ENDPOINTS_KEY), '[{"port":"20880","protocol":"dubbo"}]'), f"{_EP}[0].port"),
        (_mutated((*_META, ENDPOINTS_KEY), '[{"port":0,"protocol":"dubbo"}]'), f"{_EP}[0].port"),
        (_mutated((*_META, ENDPOINTS_KEY), '[{"port":1,"protocol":"a"},{"port":2}]'), f"{_EP}[1].protocol"),
        (_mutated((*_META, ENDPOINTS_KEY), '[{"port":1,"protocol":""}]'), f"{_EP}[0].protocol"),
        (_mutated((*_META, URL_PARAMS_KEY), "{"), _UP),
        (_mutated((*_META, URL_PARAMS_KEY), '["dubbo"]'), _UP),
        # Dubbo 2.7's form (2.7.x ServiceInstanceMetadataUtils.getMetadataServiceURLsParams), which
        # 3.x's StandardMetadataServiceURLBuilder cannot read.
        (_mutated((*_META, URL_PARAMS_KEY), '{"dubbo":{"version":"1.0.0","port":"20880"}}'), f"{_UP}.dubbo"),
        (_mutated((*_META, URL_PARAMS_KEY), '{"port":20880,"protocol":"dubbo"}'), f"{_UP}.port"),
        (_mutated((*_META, URL_PARAMS_KEY), '{"port":"20880"}'), f"{_UP}.protocol"),
        (_mutated((*_META, URL_PARAMS_KEY), '{"protocol":"dubbo"}'), f"{_UP}.port"),
        (_mutated((*_META, URL_PARAMS_KEY), '{"port":"2O880","protocol":"dubbo"}'), f"{_UP}.port"),
        (_mutated((*_META, URL_PARAMS_KEY), '{"port":"99999","protocol":"dubbo"}'), f"{_UP}.port"),
    ],
)
def test_malformed_instances_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(InstanceError) as caught:
        parse_curator(data, app=APP)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


# -- writing ---------------------------------------------------------------------------------------------


def test_round_trip_is_byte_exact() -> None:
    assert to_curator(parse_curator(JAVA_INSTANCE, app=APP)) == JAVA_INSTANCE


def test_dubbo_go_instance_is_rewritten_in_java_form() -> None:
    # A Java consumer must read what we write: every property Curator's OldServiceInstance has.
    written = json.loads(to_curator(parse_curator(GO_INSTANCE, app="go-provider")))
    assert list(written) == [
        "name",
        "id",
        "address",
        "port",
        "sslPort",
        "payload",
        "registrationTimeUTC",
        "serviceType",
        "uriSpec",
    ]
    assert list(written["payload"]) == ["@class", "id", "name", "metadata"]


def test_built_instance_is_what_dubbo_writes() -> None:
    # The MetadataService URL as Dubbo 3.3 exports it carries more parameters than the register keys;
    # getMetadataServiceParameter drops application/group/deprecated/timestamp and the rest.
    exported = {
        "application": APP,
        "bind.ip": "192.168.1.9",
        "bind.port": "20880",
        "connections": "1",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "group": APP,
        "interface": "org.apache.dubbo.metadata.MetadataService",
        "methods": "getMetadataInfo,getMetadataURL",
        "release": "3.3.0",
        "side": "provider",
        "timestamp": "1733312345000",
        "token": " ",  # blank: left out (StringUtils.isBlank)
        "version": "1.0.0",
    }
    params = metadata_service_params("dubbo", 20880, exported)
    assert list(params) == ["connections", "version", "dubbo", "release", "side", "port", "protocol"]
    metadata = instance_metadata(
        "a662fd2213a8a49dc6ff43a4c2ae7b9e", endpoints={"dubbo": 20880}, metadata_service=params
    )
    metadata["timestamp"] = "1733312345678"  # an instance parameter (ServiceInstanceMetadataCustomizer)
    instance = AppInstance(APP, "192.168.1.9", 20880, metadata, registration_time_utc=1733312346012)
    assert to_curator(instance) == JAVA_INSTANCE


def test_instance_metadata_minimal_and_remote() -> None:
    assert instance_metadata("r1", storage_type=REMOTE) == {
        REVISION_KEY: "r1",
        STORAGE_TYPE_KEY: "remote",
        METADATA_VERSION_KEY: "1.0.0",
    }


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: instance_metadata(""), "revision"),
        (lambda: instance_metadata("r1", storage_type="disk"), "storage type"),  # type: ignore[arg-type]
        (lambda: metadata_service_params("", 20880, {}), "protocol"),
        (lambda: metadata_service_params("dubbo", 0, {}), "port"),
    ],
)
def test_builders_refuse_bad_input(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_non_ascii_metadata_is_written_raw() -> None:
    # Jackson writes UTF-8 without \u escapes; quotes and backslashes escaped.
    instance = AppInstance("应用", "10.0.0.1", 1, {"note": 'a"b\\c'})
    data = to_curator(instance)
    assert "应用".encode() in data
    assert rb'"note":"a\"b\\c"' in data
    assert parse_curator(data, app="应用") == instance


def test_ipv6_instance_id() -> None:
    # CuratorFrameworkUtils.generateId: host + ":" + port, no brackets.
    instance = AppInstance(APP, "fe80::1", 20880)
    assert instance.id == "fe80::1:20880"
    assert instance_path(instance) == "/services/demo-provider/fe80::1:20880"
    assert parse_curator(to_curator(instance), app=APP) == instance


# -- the value -------------------------------------------------------------------------------------------


def test_instance_value_semantics() -> None:
    instance = parse_curator(JAVA_INSTANCE, app=APP)
    with pytest.raises(TypeError):
        instance.metadata["x"] = "y"  # type: ignore[index]
    assert hash(instance) == hash(parse_curator(JAVA_INSTANCE, app=APP))
    assert pickle.loads(pickle.dumps(instance)) == instance
    assert copy.deepcopy(instance) == instance
    assert copy.deepcopy(instance).endpoints == instance.endpoints
    changed = AppInstance(APP, "192.168.1.9", 20880, {**instance.metadata, REVISION_KEY: "other"})
    assert changed != instance


def test_instance_paths() -> None:
    instance = AppInstance(APP, "192.168.1.9", 20880)
    # ZookeeperServiceDiscovery.DEFAULT_GROUP + Curator DiscoveryPathConstructorImpl (base/name/id).
    assert instances_path(APP) == "/services/demo-provider"
    assert instance_path(instance) == "/services/demo-provider/192.168.1.9:20880"
    assert instance_path(instance, root="/other") == "/other/demo-provider/192.168.1.9:20880"
    for bad in ("", "a/b", "..", "a\nb"):
        with pytest.raises(ValueError, match="ZooKeeper path"):
            instances_path(bad)


# -- the service-name mapping ----------------------------------------------------------------------------

IFACE = "org.apache.dubbo.demo.DemoService"


def test_mapping_locations() -> None:
    # ZookeeperMetadataReport.buildPathKey(DEFAULT_MAPPING_GROUP, interface) under root "/dubbo".
    assert mapping_path(IFACE) == "/dubbo/mapping/org.apache.dubbo.demo.DemoService"
    assert mapping_path(IFACE, root="/other") == "/other/mapping/org.apache.dubbo.demo.DemoService"
    with pytest.raises(ValueError, match="ZooKeeper path"):
        mapping_path("a/b")
    # NacosMetadataReport.getServiceAppMapping: dataId = the interface, group = "mapping".
    assert nacos_mapping_config(IFACE) == (IFACE, "mapping")
    with pytest.raises(ValueError):
        nacos_mapping_config("")


@pytest.mark.parametrize(
    ("content", "apps"),
    [
        (None, ()),
        ("", ()),
        ("  ", ()),
        ("demo-provider", ("demo-provider",)),
        # ServiceNameMapping.getAppNames: split on ",", String.trim, empty dropped, TreeSet (sorted, unique).
        ("b-app,a-app", ("a-app", "b-app")),
        (" a-app , b-app ,,a-app,", ("a-app", "b-app")),
        ("a-app,\tb-app\n", ("a-app", "b-app")),
        (b"demo-provider,other-app", ("demo-provider", "other-app")),
    ],
)
def test_mapping_apps(content: str | bytes | None, apps: tuple[str, ...]) -> None:
    assert mapping_apps(content) == apps


@pytest.mark.parametrize(
    ("content", "app", "merged"),
    [
        # MetadataServiceNameMapping.map: nothing there -> the name alone.
        (None, "a-app", "a-app"),
        ("", "a-app", "a-app"),
        # Already there (names compared trimmed) -> unchanged, Dubbo writes nothing.
        ("a-app", "a-app", "a-app"),
        ("b-app, a-app ", "a-app", "b-app, a-app "),
        # Otherwise appended after a comma, the existing text kept as it is (order too).
        ("b-app", "a-app", "b-app,a-app"),
        ("c-app,b-app", "a-app", "c-app,b-app,a-app"),
        ("b-app ,", "a-app", "b-app ,,a-app"),
        ("a-app-x", "a-app", "a-app-x,a-app"),
    ],
)
def test_mapping_with(content: str | None, app: str, merged: str) -> None:
    assert mapping_with(content, app) == merged
    assert app in mapping_apps(merged)


@pytest.mark.parametrize("app", ["", "a,b", " a-app", "a-app\t"])
def test_mapping_with_refuses_names_it_cannot_hold(app: str) -> None:
    with pytest.raises(ValueError, match="application name"):
        mapping_with("x", app)


@pytest.mark.parametrize(
    ("content", "ticket"),
    [
        # NacosMetadataReport.getConfigItem: "0" for no content, else MD5Utils.getMd5 (lowercase hex of
        # the UTF-8 bytes); the values from `printf %s CONTENT | md5sum`.
        (None, "0"),
        ("", "0"),
        ("demo-provider", "9dd73e6bb73688a208dcef89c5a938c0"),
        ("demo-provider,other-app", "ae7c222396db74c788197981b1fdab67"),
    ],
)
def test_nacos_mapping_ticket(content: str | None, ticket: str) -> None:
    assert nacos_mapping_ticket(content) == ticket
