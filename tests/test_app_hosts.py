"""Application-level discovery results as provider URLs (regproxy.discovery.app_hosts).

No Java here: the instances and MetadataInfo values are written out by hand as a Dubbo 3.3 provider
publishes them, each fact with the apache/dubbo 3.3 file it comes from.  The behaviour checked is that
of ServiceInstancesChangedListener, InstanceAddressURL, ProtocolServiceKey/ServiceKey.Matcher and
MigrationInvoker (dubbo-registry-api, dubbo-common).
"""

from __future__ import annotations

import json

import pytest

from regproxy.discovery.app_hosts import (
    REMOTE_APPLICATION_KEY,
    AppState,
    Fetch,
    FoundURL,
    Source,
    app_urls,
    merge_found,
    service_matches,
)
from regproxy.discovery.tables import hosts_from
from regproxy.governance.migration import MigrationSetting
from regproxy.registry.instances import AppInstance
from regproxy.registry.metadata_info import MetadataInfo, ServiceInfo
from regproxy.registry.url import DubboURL, Subscription, provider_url
from regproxy.routing.model import SPEAKS_DUBBO, SPEAKS_TRI

APP = "demo-provider"
IFACE = "com.x.DemoService"

# A Dubbo 3.3 Java provider exporting com.x.DemoService on dubbo (20880) and tri (50051).
# ServiceInfo params: the exported URL's parameters less DefaultMetadataParamsFilter's excluded ones
# (pid, timestamp, ipv6, heartbeat, monitor, bind.ip/port, qos.*, validation, interfaces);
# port and path: the URL's (MetadataInfo.ServiceInfo(URL, filters)).
JAVA_PARAMS = {
    "anyhost": "true",
    "application": APP,
    "background": "false",
    "deprecated": "false",
    "dubbo": "2.0.2",
    "dynamic": "true",
    "generic": "false",
    "interface": IFACE,
    "methods": "sayHello,sayHi",
    "prefer.serialization": "hessian2,fastjson2",
    "release": "3.3.0",
    "service-name-mapping": "true",
    "side": "provider",
}
DUBBO_SVC = ServiceInfo(IFACE, None, None, "dubbo", 20880, IFACE, JAVA_PARAMS)
TRI_SVC = ServiceInfo(IFACE, None, None, "tri", 50051, IFACE, JAVA_PARAMS)
JAVA_META = MetadataInfo.of(APP, [DUBBO_SVC, TRI_SVC])


def _instance_metadata(revision: str | None, endpoints: list[dict[str, object]]) -> dict[str, str]:
    # ServiceInstanceMetadataUtils keys; "timestamp" is one of the instance params
    # (DefaultMetadataParamsFilter.instanceParamsIncluded) that ServiceInstanceMetadataCustomizer copies
    # into the instance metadata; the endpoints come from ProtocolPortsMetadataCustomizer.
    meta = {
        "dubbo.endpoints": json.dumps(endpoints, separators=(",", ":")),
        "dubbo.metadata.storage-type": "local",
        "meta-v": "1.0.0",
        "timestamp": "1733312345678",
    }
    if revision is not None:
        meta["dubbo.metadata.revision"] = revision
    return meta


ENDPOINTS = [{"port": 20880, "protocol": "dubbo"}, {"port": 50051, "protocol": "tri"}]


def java_instance(host: str, revision: str | None = JAVA_META.revision) -> AppInstance:
    return AppInstance(APP, host, 20880, _instance_metadata(revision, ENDPOINTS))


def state(*instances: AppInstance, meta: MetadataInfo | None = JAVA_META) -> AppState:
    metadata = {meta.revision: meta} if meta is not None and meta.revision else {}
    return AppState(instances, metadata)


SUB = Subscription(IFACE)


# -- the URLs --------------------------------------------------------------------------------------------


def test_one_url_per_instance_and_service_with_instance_address_url_parameters() -> None:
    a, b = java_instance("10.0.0.1"), java_instance("10.0.0.2")
    result = app_urls(SUB, {APP: state(a, b)})
    source = Source(APP, JAVA_META.revision or "")
    # ServiceInstancesChangedListener.getServiceUrlsCache: every instance of the revision, per ServiceInfo;
    # sorted by match key here ("...:dubbo" before "...:tri").
    assert [(f.url.protocol, f.url.host, f.url.port) for f in result.urls] == [
        ("dubbo", "10.0.0.1", 20880),
        ("tri", "10.0.0.1", 50051),
        ("dubbo", "10.0.0.2", 20880),
        ("tri", "10.0.0.2", 50051),
    ]
    assert all(f.application == source and not f.interface for f in result.urls)
    first = result.urls[0].url
    assert first.path == IFACE  # InstanceAddressURL.getPath: the ServiceInfo's path
    # InstanceAddressURL.getServiceParameters: instance metadata, the ServiceInfo params over it;
    # getParameter(REMOTE_APPLICATION_KEY): the instance's application.
    assert dict(first.params) == {
        **a.metadata,
        **JAVA_PARAMS,
        REMOTE_APPLICATION_KEY: APP,
    }
    assert (result.to_fetch, result.no_revision, result.refused, result.keep_previous) == ((), (), (), False)


def test_service_params_win_over_instance_metadata() -> None:
    # getServiceParameters: params.putAll(instanceParams) then params.putAll(metadataParams).
    svc = ServiceInfo(IFACE, None, None, "dubbo", 20880, IFACE, {"timestamp": "2", "weight": "50"})
    meta = MetadataInfo.of(APP, [svc])
    inst = AppInstance(APP, "10.0.0.1", 20880, {**_instance_metadata(meta.revision, []), "weight": "7"})
    (found,) = app_urls(SUB, {APP: state(inst, meta=meta)}).urls
    assert found.url.params["timestamp"] == "2"
    assert found.url.weight == 50


def test_port_service_port_then_endpoint_then_instance_port() -> None:
    # getServiceUrlsCache: a ServiceInfo port > 0 wins (copyFrom(port)); else the endpoint of the
    # protocol (ServiceInstanceMetadataUtils.getEndpoint); else the instance port.
    fixed = ServiceInfo(IFACE, None, None, "dubbo", 20990, IFACE, {})
    by_endpoint = ServiceInfo(IFACE, None, None, "tri", -1, IFACE, {})
    by_instance = ServiceInfo(IFACE, None, None, "rest", -1, IFACE, {})
    meta = MetadataInfo.of(APP, [fixed, by_endpoint, by_instance])
    inst = AppInstance(APP, "10.0.0.1", 20880, _instance_metadata(meta.revision, ENDPOINTS))
    urls = app_urls(SUB, {APP: state(inst, meta=meta)}).urls
    assert {f.url.protocol: f.url.port for f in urls} == {"dubbo": 20990, "tri": 50051, "rest": 20880}


def test_service_without_protocol_gives_no_url() -> None:
    meta = MetadataInfo.of(APP, [ServiceInfo(IFACE, path=IFACE), DUBBO_SVC])
    urls = app_urls(SUB, {APP: state(java_instance("10.0.0.1", meta.revision), meta=meta)}).urls
    assert [f.url.protocol for f in urls] == ["dubbo"]


# -- which services a subscription gets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "group", "svc_version", "svc_group", "expected"),
    [
        # ServiceKey.Matcher: empty wants empty; "*" any; a comma list any item (trimmed); else equal.
        ("", "", None, None, True),
        ("", "", "1.0.0", None, False),
        ("1.0.0", "", "1.0.0", None, True),
        ("1.0.0", "", "2.0.0", None, False),
        ("*", "", "2.0.0", None, True),
        ("1.0.0, 2.0.0", "", "2.0.0", None, True),
        ("", "", None, "a", False),
        ("", "a", None, "a", True),
        ("", "*", None, "b", True),
        ("", "a, b", None, "b", True),
        ("", "a,b", None, "c", False),
        ("", "a,b", None, None, False),
        # An empty item of the list matches the empty group.
        ("", ",a", None, None, True),
        # regproxy reads "0.0.0" as no version on both sides (Subscription, normalize_version).
        ("0.0.0", "", None, None, True),
        ("", "", "0.0.0", None, True),
    ],
)
def test_service_key_matching(
    version: str, group: str, svc_version: str | None, svc_group: str | None, expected: bool
) -> None:
    svc = ServiceInfo(IFACE, svc_group, svc_version, "dubbo", 20880, IFACE, {})
    assert service_matches(Subscription(IFACE, version, group), svc) is expected


def test_interface_and_path_must_both_be_the_subscribed_interface() -> None:
    # getAddresses looks the consumer's interface up among the ServiceInfos' *paths*, then
    # ProtocolServiceKey.Matcher compares the interface with the ServiceInfo's name.
    assert not service_matches(SUB, ServiceInfo(IFACE, None, None, "dubbo", 20880, "demo-path", {}))
    assert not service_matches(SUB, ServiceInfo("com.x.Other", None, None, "dubbo", 20880, IFACE, {}))
    assert not service_matches(SUB, ServiceInfo(IFACE, None, None, "dubbo", 20880, None, {}))


def test_url_carries_the_services_own_version_and_group_under_a_wildcard() -> None:
    a = ServiceInfo(IFACE, "ga", "1.0.0", "dubbo", 20880, IFACE, {"group": "ga", "version": "1.0.0"})
    b = ServiceInfo(IFACE, "gb", None, "dubbo", 20881, IFACE, {"group": "gb"})
    meta = MetadataInfo.of(APP, [a, b])
    inst = AppInstance(APP, "10.0.0.1", 20880, _instance_metadata(meta.revision, []))
    urls = app_urls(Subscription(IFACE, "*", "*"), {APP: state(inst, meta=meta)}).urls
    assert [(f.url.group, f.url.version, f.url.port) for f in urls] == [
        ("ga", "1.0.0", 20880),
        ("gb", "", 20881),
    ]
    assert all(f.url.interface == IFACE for f in urls)


# -- what the caller must do -----------------------------------------------------------------------------


def test_missing_metadata_and_instances_without_revision_are_reported() -> None:
    known = java_instance("10.0.0.1")
    pending = [java_instance("10.0.0.2", "rev-new"), java_instance("10.0.0.3", "rev-new")]
    failed = java_instance("10.0.0.4", "rev-failed")
    # doOnEvent: no revision, or RevisionResolver.EMPTY_REVISION ("0"), is skipped.
    bare, empty = java_instance("10.0.0.5", None), java_instance("10.0.0.6", "0")
    app = AppState(
        (known, *pending, failed, bare, empty),
        {JAVA_META.revision or "": JAVA_META, "rev-failed": None},
    )
    result = app_urls(SUB, {APP: app})
    assert {f.url.host for f in result.urls} == {"10.0.0.1"}
    assert result.to_fetch == (
        Fetch(APP, "rev-new", tuple(pending)),
        Fetch(APP, "rev-failed", (failed,)),
    )
    assert result.no_revision == (bare, empty)
    assert result.keep_previous is False  # one revision has its metadata: Dubbo notifies


def test_keep_previous_when_no_revision_has_metadata() -> None:
    # doOnEvent: emptyNum == revisionToInstances.size() -> no notification, retry later.
    pending = java_instance("10.0.0.2", "rev-new")
    assert app_urls(SUB, {APP: AppState((pending,), {})}).keep_previous is True
    # No instance at all (or none with a revision) is an empty list Dubbo does notify.
    assert app_urls(SUB, {APP: AppState((), {})}).keep_previous is False
    assert app_urls(SUB, {APP: AppState((java_instance("10.0.0.5", None),), {})}).keep_previous is False


def test_a_url_that_cannot_be_built_is_refused_alone() -> None:
    svc = ServiceInfo(IFACE, None, None, "dubbo", 20880, IFACE, {"a&b": "x"})
    bad_meta = MetadataInfo.of("bad-app", [svc])
    bad = AppInstance("bad-app", "10.0.0.9", 20880, _instance_metadata(bad_meta.revision, []))
    result = app_urls(SUB, {"bad-app": state(bad, meta=bad_meta), APP: state(java_instance("10.0.0.1"))})
    assert [f.url.host for f in result.urls] == ["10.0.0.1", "10.0.0.1"]
    (refused,) = result.refused
    assert (refused.source.app, refused.instance, refused.match_key) == ("bad-app", bad, svc.match_key)
    assert "a&b" in refused.reason


def test_application_level_urls_become_hosts_like_interface_level_ones() -> None:
    # The Java instance exports dubbo on 20880 and tri on 50051: each address is a host that speaks
    # its URL's protocol (Triple calls go to the 50051 ones).
    result = app_urls(SUB, {APP: state(java_instance("10.0.0.1"), java_instance("10.0.0.2"))})
    hosts, own = hosts_from(SUB, ["zk"], {"zk": [f.url for f in result.urls]}, {})
    assert own == []
    assert [(h.address, h.speaks) for h in hosts] == [
        ("10.0.0.1:20880", SPEAKS_DUBBO),
        ("10.0.0.1:50051", SPEAKS_TRI),
        ("10.0.0.2:20880", SPEAKS_DUBBO),
        ("10.0.0.2:50051", SPEAKS_TRI),
    ]
    assert hosts[0].metadata["application"] == APP
    assert hosts[0].metadata[REMOTE_APPLICATION_KEY] == APP


# -- interface-level and application-level together ---------------------------------------------------------


def _iface(host: str, port: int = 20880, **params: str) -> DubboURL:
    return provider_url(
        interface=IFACE, ip=host, port=port, application=APP, pid=1, timestamp_ms=1, params=params
    )


def test_merge_interface_and_application_settings_pick_one_list() -> None:
    iface = [_iface("10.0.0.1")]
    found = app_urls(SUB, {APP: state(java_instance("10.0.0.2"))}).urls
    # MigrationStep.FORCE_INTERFACE / FORCE_APPLICATION: one invoker's addresses only.
    assert merge_found(SUB, iface, found, MigrationSetting.INTERFACE) == (FoundURL(iface[0], interface=True),)
    assert merge_found(SUB, iface, found, MigrationSetting.APPLICATION) == found


def test_merge_both_one_host_per_address_application_level_wins() -> None:
    # MigrationInvoker APPLICATION_FIRST prefers the application-level invoker (calcPreferredInvoker,
    # DefaultMigrationAddressComparator with the default threshold 0.0); per address here.
    twice = _iface("10.0.0.1", weight="10")
    only_iface = _iface("10.0.0.3")
    found = app_urls(SUB, {APP: state(java_instance("10.0.0.1"), java_instance("10.0.0.2"))}).urls
    merged = merge_found(SUB, [twice, only_iface], found, MigrationSetting.BOTH)
    source = Source(APP, JAVA_META.revision or "")
    assert [(f.url.address, f.url.protocol, f.interface, f.application) for f in merged] == [
        ("10.0.0.1:20880", "dubbo", True, source),
        ("10.0.0.1:50051", "tri", False, source),
        ("10.0.0.2:20880", "dubbo", False, source),
        ("10.0.0.2:50051", "tri", False, source),
        ("10.0.0.3:20880", "dubbo", True, None),
    ]
    hosts, _ = hosts_from(SUB, ["zk"], {"zk": [f.url for f in merged]}, {})
    assert [h.address for h in hosts if h.speaks & SPEAKS_DUBBO] == [
        "10.0.0.1:20880",
        "10.0.0.2:20880",
        "10.0.0.3:20880",
    ]
    assert hosts[0].weight == 100  # the application-level URL's parameters, not weight=10


def test_merge_both_an_unusable_application_url_does_not_hide_an_interface_one() -> None:
    # Only an application-level URL the subscription would use (registry.url.matches) takes an address.
    disabled = ServiceInfo(IFACE, None, None, "dubbo", 20880, IFACE, {"disabled": "true"})
    meta = MetadataInfo.of(APP, [disabled])
    inst = AppInstance(APP, "10.0.0.1", 20880, _instance_metadata(meta.revision, []))
    found = app_urls(SUB, {APP: state(inst, meta=meta)}).urls
    iface = _iface("10.0.0.1")
    merged = merge_found(SUB, [iface], found, MigrationSetting.BOTH)
    assert merged[-1] == FoundURL(iface, interface=True)
    hosts, _ = hosts_from(SUB, ["zk"], {"zk": [f.url for f in merged]}, {})
    assert [h.address for h in hosts] == ["10.0.0.1:20880"]
    assert hosts[0].metadata.get("disabled") is None


def test_merge_refuses_an_unknown_setting() -> None:
    with pytest.raises(ValueError, match="interface, application, both"):
        merge_found(SUB, [], [], "force")
