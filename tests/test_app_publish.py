"""What regproxy registers at application level for its publications (regproxy.discovery.app_publish).

Where each fact comes from (apache/dubbo 3.3):

* the params a ServiceInfo keeps (every URL parameter but the excluded, matched by
  ``equalsIgnoreCase`` or ``contains("." + key)``), name/group/version/protocol/port/path from the URL:
  dubbo-metadata/dubbo-metadata-api/.../metadata/MetadataInfo.java (``ServiceInfo(URL, List)``,
  ``extractServiceParams``, ``addService``, ``extractInstanceParams``)
* the excluded service keys and the included instance keys:
  dubbo-metadata/dubbo-metadata-api/.../metadata/DefaultMetadataParamsFilter.java
* the revision (app + each ``toDescString`` in ``TreeMap`` order, MD5): MetadataInfo.calAndGetRevision;
  the MD5 values below come from ``printf '%s' STRING | md5sum``
* instance metadata: dubbo-registry-api/.../client/AbstractServiceDiscovery.java (createServiceInstance,
  calOrUpdateInstanceRevision), .../client/metadata/ProtocolPortsMetadataCustomizer.java,
  ServiceInstanceMetadataCustomizer.java, ServiceInstanceMetadataUtils.java (getMetadataServiceParameter),
  dubbo-config-api/.../config/metadata/MetadataServiceURLParamsMetadataCustomizer.java
* the MetadataService's group (the application) and version 1.0.0:
  dubbo-config-api/.../config/bootstrap/builders/InternalServiceConfigBuilder.java (build) and
  ConfigurableMetadataServiceExporter.exportV1
"""

from __future__ import annotations

import hashlib
import json

import pytest

from regproxy.discovery.app_publish import (
    app_instance,
    app_publications,
    instance_params,
    metadata_info,
    metadata_service_url_params,
    service_info,
    service_params,
)
from regproxy.discovery.desired import PublishSpec
from regproxy.registry.instances import (
    ENDPOINTS_KEY,
    METADATA_VERSION_KEY,
    REVISION_KEY,
    STORAGE_TYPE_KEY,
    URL_PARAMS_KEY,
    Endpoint,
)
from regproxy.registry.metadata_info import ServiceInfo, revision_source
from regproxy.registry.url import DubboURL, provider_url, regproxy_release

# The URLs as regproxy registers them (provider_url's parameters; release pinned to 0.1.0 so the strings
# below do not depend on the installed version).
COMMON = "anyhost=true&application=shop&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false"
GREETER = DubboURL.parse(
    "dubbo://10.0.0.5:20880/com.x.Greeter?" + COMMON + "&interface=com.x.Greeter&methods=greet,hello"
    "&pid=4242&release=0.1.0&side=provider&timestamp=1700000000000"
)
# Another process (pid), started later (timestamp): the same service.
GREETER_RESTARTED = DubboURL.parse(
    "dubbo://10.0.0.5:20880/com.x.Greeter?" + COMMON + "&interface=com.x.Greeter&methods=greet,hello"
    "&pid=777&release=0.1.0&side=provider&timestamp=1800000000000"
)
GREETER_NEW_METHOD = DubboURL.parse(
    "dubbo://10.0.0.5:20880/com.x.Greeter?" + COMMON + "&interface=com.x.Greeter&methods=greet,hello,hi"
    "&pid=4242&release=0.1.0&side=provider&timestamp=1700000000000"
)
GREETER_WEIGHTED = DubboURL.parse(
    "dubbo://10.0.0.5:20880/com.x.Greeter?" + COMMON + "&interface=com.x.Greeter&methods=greet,hello"
    "&pid=4242&release=0.1.0&side=provider&timestamp=1700000000000&weight=50"
)
CART = DubboURL.parse(
    "dubbo://10.0.0.5:20880/com.x.Cart?" + COMMON + "&group=g&interface=com.x.Cart&methods=add"
    "&pid=4242&release=0.1.0&side=provider&timestamp=1700000000500&version=1.0.0"
)

GREETER_PARAMS = (
    "{anyhost=true, application=shop, deprecated=false, dubbo=2.0.2, dynamic=true, generic=false, "
    "interface=com.x.Greeter, methods=greet,hello, release=0.1.0, side=provider}"
)
GREETER_DESC = "com.x.Greeter:dubbo20880com.x.Greeter" + GREETER_PARAMS
CART_DESC = (
    "g/com.x.Cart:1.0.0:dubbo20880com.x.Cart{anyhost=true, application=shop, deprecated=false, "
    "dubbo=2.0.2, dynamic=true, generic=false, group=g, interface=com.x.Cart, methods=add, "
    "release=0.1.0, side=provider, version=1.0.0}"
)

# Publication sets -> the exact string Dubbo hashes -> its MD5.
REVISIONS = [
    pytest.param([GREETER], "shop" + GREETER_DESC, "b457b5aa6c69e038c6114f3d2733a2ea", id="one"),
    # pid and timestamp are filtered out: a restart does not change the revision.
    pytest.param(
        [GREETER_RESTARTED], "shop" + GREETER_DESC, "b457b5aa6c69e038c6114f3d2733a2ea", id="restart"
    ),
    pytest.param(
        [GREETER_NEW_METHOD],
        "shopcom.x.Greeter:dubbo20880com.x.Greeter{anyhost=true, application=shop, deprecated=false, "
        "dubbo=2.0.2, dynamic=true, generic=false, interface=com.x.Greeter, methods=greet,hello,hi, "
        "release=0.1.0, side=provider}",
        "1396f5173b174a5b6bb3f879a748cba8",
        id="new-method",
    ),
    pytest.param(
        [GREETER_WEIGHTED],
        "shopcom.x.Greeter:dubbo20880com.x.Greeter{anyhost=true, application=shop, deprecated=false, "
        "dubbo=2.0.2, dynamic=true, generic=false, interface=com.x.Greeter, methods=greet,hello, "
        "release=0.1.0, side=provider, weight=50}",
        "167d41ee4c505402beff8f1b8fc39cf2",
        id="new-param",
    ),
    # TreeMap order of the match keys: "com.x.Greeter:dubbo" < "g/com.x.Cart:1.0.0:dubbo".
    pytest.param(
        [GREETER, CART], "shop" + GREETER_DESC + CART_DESC, "136d87c84ade1b8648146f7c8759d101", id="two"
    ),
    pytest.param(
        [CART, GREETER_RESTARTED],
        "shop" + GREETER_DESC + CART_DESC,
        "136d87c84ade1b8648146f7c8759d101",
        id="two-reversed",
    ),
]


@pytest.mark.parametrize(("urls", "source", "revision"), REVISIONS)
def test_revision_is_the_md5_of_what_dubbo_hashes(urls: list[DubboURL], source: str, revision: str) -> None:
    info = metadata_info("shop", urls)
    assert revision_source(info.app, info.services) == source
    assert hashlib.md5(source.encode()).hexdigest() == revision
    assert info.revision == revision
    assert info.calculated_revision() == revision


def test_revisions_differ_exactly_when_the_services_do() -> None:
    revisions = {p.id: p.values[2] for p in REVISIONS}
    assert revisions["one"] == revisions["restart"]
    assert revisions["two"] == revisions["two-reversed"]
    assert len({revisions[k] for k in ("one", "new-method", "new-param", "two")}) == 4


def test_service_info_as_dubbo_builds_it_from_the_url() -> None:
    assert service_info(CART) == ServiceInfo(
        name="com.x.Cart",
        group="g",
        version="1.0.0",
        protocol="dubbo",
        port=20880,
        path="com.x.Cart",
        params={k: v for k, v in CART.params.items() if k not in ("pid", "timestamp")},
    )
    greeter = service_info(GREETER)
    # URL.getGroup()/getVersion() are null when the parameter is absent.
    assert (greeter.group, greeter.version, greeter.match_key) == (None, None, "com.x.Greeter:dubbo")
    # URL.getServiceInterface(): the interface parameter, the path when there is none.
    pathed = DubboURL("dubbo", "10.0.0.5", 20880, "svc-path", {"interface": "com.x.Svc"})
    assert (service_info(pathed).name, service_info(pathed).path) == ("com.x.Svc", "svc-path")
    assert service_info(DubboURL("dubbo", "10.0.0.5", 20880, "com.x.Svc")).name == "com.x.Svc"


def test_service_params_drop_what_default_metadata_params_filter_excludes() -> None:
    params = {
        # excluded, equalsIgnoreCase
        "pid": "1",
        "TIMESTAMP": "2",
        "Qos.Port": "3",
        "ıpv6": "4",  # dotless i: Character.toUpperCase gives I, so Java matches "ipv6"
        "monitor": "5",
        "bind.ip": "6",
        "bind.port": "7",
        "qos.enable": "8",
        "qos.host": "9",
        "qos.accept.foreign.ip": "10",
        "validation": "11",
        "interfaces": "12",
        "heartbeat.timeout": "13",
        # excluded, contains "." + key (case-sensitive)
        "greet.timestamp": "14",
        "a.pidx": "15",
        "x.validation.y": "16",
        # kept
        "pidfile": "17",
        "mytimestamp": "18",
        "greet.TIMESTAMP": "19",
        "heartbeat": "20",
        "timeout": "21",
        "methods": "greet",
    }
    url = DubboURL("dubbo", "10.0.0.5", 20880, "com.x.Svc", params)
    assert service_params(url) == {
        "pidfile": "17",
        "mytimestamp": "18",
        "greet.TIMESTAMP": "19",
        "heartbeat": "20",
        "timeout": "21",
        "methods": "greet",
    }


def test_revision_ignores_pid_and_time_of_urls_provider_url_builds() -> None:
    def url(pid: int, stamp: int) -> DubboURL:
        return provider_url(
            interface="com.x.Greeter",
            ip="10.0.0.5",
            port=20880,
            methods=("hello",),
            pid=pid,
            timestamp_ms=stamp,
        )

    first = metadata_info("shop", [url(1, 1700000000000)])
    assert first.revision == metadata_info("shop", [url(2, 1800000000000)]).revision
    assert "pid" not in first.services["com.x.Greeter:dubbo"].params


def test_instance_params_take_dubbos_included_keys_last_url_winning() -> None:
    assert instance_params([GREETER, CART]) == {"timestamp": "1700000000500"}
    assert instance_params([CART, GREETER]) == {"timestamp": "1700000000000"}
    ipv6 = DubboURL("dubbo", "10.0.0.5", 20880, "com.x.Svc", {"ipv6": "fd00::5", "heartbeat.timeout": "9000"})
    assert instance_params([ipv6]) == {"heartbeat.timeout": "9000", "ipv6": "fd00::5"}


def test_metadata_service_url_params() -> None:
    params = metadata_service_url_params("dubbo", 20880)
    # getMetadataServiceParameter: the register keys in DEFAULT_REGISTER_PROVIDER_KEYS order, then
    # port and protocol; group (the application) is left for the consumer to add.
    assert list(params.items()) == [
        ("version", "1.0.0"),
        ("dubbo", "2.0.2"),
        ("release", regproxy_release()),
        ("side", "provider"),
        ("port", "20880"),
        ("protocol", "dubbo"),
    ]


def test_app_instance_metadata() -> None:
    info = metadata_info("shop", [GREETER, CART])
    instance = app_instance("shop", [GREETER, CART], info.calculated_revision())
    assert (instance.app, instance.host, instance.port, instance.id) == (
        "shop",
        "10.0.0.5",
        20880,
        "10.0.0.5:20880",
    )
    assert dict(instance.metadata) == {
        ENDPOINTS_KEY: '[{"port":20880,"protocol":"dubbo"}]',
        URL_PARAMS_KEY: '{"version":"1.0.0","dubbo":"2.0.2","release":"'
        + regproxy_release()
        + '","side":"provider","port":"20880","protocol":"dubbo"}',
        REVISION_KEY: "136d87c84ade1b8648146f7c8759d101",
        STORAGE_TYPE_KEY: "local",
        METADATA_VERSION_KEY: "1.0.0",
        "timestamp": "1700000000500",
    }
    # What a Dubbo 3 consumer reads back from it.
    assert instance.revision == "136d87c84ade1b8648146f7c8759d101"
    assert instance.storage_type == "local"
    assert instance.endpoints == (Endpoint(20880, "dubbo"),)
    assert instance.metadata_service_address() == ("dubbo", 20880)
    assert instance.metadata_service_params is not None
    assert instance.metadata_service_params["version"] == "1.0.0"


def test_app_instance_remote_storage() -> None:
    instance = app_instance("shop", [GREETER], "b457b5aa6c69e038c6114f3d2733a2ea", storage_type="remote")
    assert instance.metadata[STORAGE_TYPE_KEY] == "remote"
    assert instance.storage_type == "remote"


def test_app_instance_needs_one_address() -> None:
    elsewhere = DubboURL("dubbo", "10.0.0.5", 20881, "com.x.Cart", dict(CART.params))
    with pytest.raises(ValueError, match=r"10\.0\.0\.5:20880 and 10\.0\.0\.5:20881"):
        app_instance("shop", [GREETER, elsewhere], "x")
    with pytest.raises(ValueError, match="exports nothing"):
        app_instance("shop", [], "x")


def _spec(interface: str, application: str = "", group: str = "", version: str = "") -> PublishSpec:
    return PublishSpec(interface=interface, port=8080, version=version, group=group, application=application)


def test_app_publications_one_application_per_spec_application() -> None:
    billing = DubboURL.parse(
        "dubbo://10.0.0.5:20880/com.x.Bill?anyhost=true&application=billing&interface=com.x.Bill"
        "&methods=pay&pid=1&side=provider&timestamp=1700000000900"
    )
    apps = app_publications(
        [
            (_spec("com.x.Greeter"), GREETER),
            (_spec("com.x.Bill", "billing"), billing),
            (_spec("com.x.Cart", "shop", group="g", version="1.0.0"), CART),
        ],
        "shop",
    )
    assert sorted(apps) == ["billing", "shop"]
    shop_info, shop_instance = apps["shop"]
    assert shop_info == metadata_info("shop", [GREETER, CART])
    assert shop_info.revision == "136d87c84ade1b8648146f7c8759d101"
    assert shop_instance.revision == shop_info.revision
    assert shop_instance.metadata["timestamp"] == "1700000000500"
    billing_info, billing_instance = apps["billing"]
    assert list(billing_info.services) == ["com.x.Bill:dubbo"]
    assert billing_info.app == billing_instance.app == "billing"
    assert billing_instance.revision == billing_info.revision == metadata_info("billing", [billing]).revision
    # The MetadataService each application serves: its own group, so the url-params are the same.
    assert json.loads(billing_instance.metadata[URL_PARAMS_KEY]) == json.loads(
        shop_instance.metadata[URL_PARAMS_KEY]
    )


def test_app_publications_revision_whatever_the_order() -> None:
    pairs = [(_spec("com.x.Greeter"), GREETER), (_spec("com.x.Cart", group="g", version="1.0.0"), CART)]
    forward = app_publications(pairs, "shop")["shop"]
    backward = app_publications(list(reversed(pairs)), "shop", storage_type="remote")["shop"]
    assert forward[0] == backward[0]
    assert forward[1].revision == backward[1].revision == "136d87c84ade1b8648146f7c8759d101"
    assert backward[1].storage_type == "remote"
    assert app_publications([], "shop") == {}
    with pytest.raises(ValueError, match="default_app"):
        app_publications(pairs, "")
