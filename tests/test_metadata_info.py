"""Dubbo 3's MetadataInfo: the revision, the metadata report's JSON, and the hessian2 Java object.

Where each fact comes from (apache/dubbo 3.3):

* fields, transient markers, ``calAndGetRevision``, ``ServiceInfo.toDescString``/``getMatchKey``:
  dubbo-metadata/dubbo-metadata-api/src/main/java/org/apache/dubbo/metadata/MetadataInfo.java
* ``EMPTY_REVISION = "0"``, ``calRevision`` = ``MD5Utils.getMd5``:
  dubbo-metadata/dubbo-metadata-api/src/main/java/org/apache/dubbo/metadata/RevisionResolver.java
* MD5 of ``input.getBytes(UTF_8)`` as lowercase hex: dubbo-common/.../common/utils/MD5Utils.java
* service key ``[group/]name[:version]``: dubbo-common/.../common/BaseServiceMetadata.java (buildServiceKey)
* the report stores ``MetadataInfo.getContent()`` = ``JsonUtils.toJson(this)`` and reads it with
  ``JsonUtils.toJavaObject(content, MetadataInfo.class)``: dubbo-metadata/dubbo-metadata-report-zookeeper/
  .../ZookeeperMetadataReport.java (publishAppMetadata, getAppMetadata), NacosMetadataReport.java the same
* the JSON libraries Dubbo picks from: dubbo-common/.../common/json/impl/{FastJson2Impl,GsonImpl,...}.java

The hessian2 form is pinned against Caucho Hessian 4.0.38 (Debian's libhessian-java, installed by
scripts/test-deps.sh): Java classes with MetadataInfo's package, class and field names and types are
compiled here and their objects serialised by ``Hessian2Output`` and read by ``Hessian2Input``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from regproxy.dubbo.hessian2 import JavaObject, decode_value, encode_value
from regproxy.registry.metadata_info import (
    EMPTY_REVISION,
    METADATA_INFO_CLASS,
    SERVICE_INFO_CLASS,
    MetadataInfo,
    MetadataInfoError,
    ServiceInfo,
    dump_json,
    from_java_object,
    java_map_string,
    parse_json,
    revision_source,
    to_java_object,
)

# -- the revision --------------------------------------------------------------------------------------

DEMO = ServiceInfo(
    "com.x.DemoService",
    protocol="dubbo",
    port=20880,
    path="com.x.DemoService",
    params={"side": "provider", "application": "demo", "methods": "sayHello,sayHi"},
)
GROUPED = ServiceInfo("com.x.Svc", "g", "1.0.0", "tri", 50051, "com.x.Svc", {})
BARE = ServiceInfo("com.x.Svc")  # no protocol, port -1, path null, params empty
ALPHA = ServiceInfo("com.x.alpha", protocol="dubbo", port=20880, path="com.x.alpha")
ZETA = ServiceInfo("com.x.Zeta", protocol="dubbo", port=20880, path="com.x.Zeta", params={"methods": "z"})
MID = ServiceInfo("com.x.Mid", group="a", protocol="dubbo", port=20880, path="com.x.Mid")
# Java's TreeMap orders by UTF-16 code unit: U+1F600 is the pair D83D DE00, which sorts *before* U+FF41
# (Python's code-point order would put it after).
WIDE = ServiceInfo(
    "com.x.Svc", protocol="dubbo", port=20880, path="com.x.Svc", params={"\uff41": "x", "\U0001f600": "y"}
)
PATHED = ServiceInfo(
    "com.x.Svc", version="2.0", protocol="dubbo", port=20880, path="svc-path", params={"timeout": "3000"}
)

# app, services, the exact string Dubbo hashes, its MD5 (from `printf '%s' STRING | md5sum`).
REVISIONS = [
    (
        "demo",
        [DEMO],
        "democom.x.DemoService:dubbo20880com.x.DemoService"
        "{application=demo, methods=sayHello,sayHi, side=provider}",
        "6e72254de741088a579590fec3a38442",
    ),
    ("app", [GROUPED], "appg/com.x.Svc:1.0.0:tri50051com.x.Svc{}", "b0ae021ea1af816179b47ef22584072f"),
    ("app", [BARE], "appcom.x.Svc-1null{}", "03316722caf8edd2a3659f8625591889"),
    (
        "shop",
        [
            ALPHA,
            ZETA,
            MID,
        ],  # TreeMap key order: "a/com.x.Mid:dubbo" < "com.x.Zeta:dubbo" < "com.x.alpha:dubbo"
        "shopa/com.x.Mid:dubbo20880com.x.Mid{}com.x.Zeta:dubbo20880com.x.Zeta{methods=z}"
        "com.x.alpha:dubbo20880com.x.alpha{}",
        "abaca80598d48319ed6bb60de179d0ef",
    ),
    (
        "\u5e94\u7528",
        [WIDE],
        "\u5e94\u7528com.x.Svc:dubbo20880com.x.Svc{\U0001f600=y, \uff41=x}",
        "23a2370839dbaf588218e609b0e7077c",
    ),
    (
        "app",
        [PATHED],
        "appcom.x.Svc:2.0:dubbo20880svc-path{timeout=3000}",
        "c2f0579b7647683ff2611a1060baeeef",
    ),
]


@pytest.mark.parametrize(("app", "services", "hashed", "revision"), REVISIONS)
def test_revision_is_dubbos(app: str, services: list[ServiceInfo], hashed: str, revision: str) -> None:
    info = MetadataInfo.of(app, services)
    assert revision_source(info.app, info.services) == hashed
    assert hashlib.md5(hashed.encode()).hexdigest() == revision  # the literal is the MD5 of the string
    assert info.revision == revision
    assert info.calculated_revision() == revision


def test_no_services_is_the_empty_revision() -> None:
    # calAndGetRevision: CollectionUtils.isEmptyMap(services) -> RevisionResolver.EMPTY_REVISION
    assert MetadataInfo.of("app", []).revision == EMPTY_REVISION == "0"


def test_keys_and_desc_string() -> None:
    assert [s.service_key for s in (DEMO, GROUPED, BARE, MID, PATHED)] == [
        "com.x.DemoService",
        "g/com.x.Svc:1.0.0",
        "com.x.Svc",
        "a/com.x.Mid",
        "com.x.Svc:2.0",
    ]
    assert [s.match_key for s in (DEMO, GROUPED, BARE, MID, PATHED)] == [
        "com.x.DemoService:dubbo",
        "g/com.x.Svc:1.0.0:tri",
        "com.x.Svc",  # an empty protocol adds nothing
        "a/com.x.Mid:dubbo",
        "com.x.Svc:2.0:dubbo",
    ]
    # blank group/version are left out, as StringUtils.isNotEmpty decides
    assert ServiceInfo("com.x.Svc", "", "", "", 1, "p").match_key == "com.x.Svc"
    assert java_map_string({}) == "{}"
    assert java_map_string({"b": "2", "a": "1"}) == "{a=1, b=2}"


def test_of_keys_services_by_match_key_and_the_model_is_frozen() -> None:
    info = MetadataInfo.of("shop", [ALPHA, MID])
    assert list(info.services) == ["com.x.alpha:dubbo", "a/com.x.Mid:dubbo"]
    with pytest.raises(TypeError):
        info.services["x"] = ALPHA  # type: ignore[index]
    with pytest.raises(TypeError):
        DEMO.params["side"] = "consumer"  # type: ignore[index]


def test_revision_changes_with_a_new_method() -> None:
    more = ServiceInfo(
        DEMO.name, protocol="dubbo", port=20880, path=DEMO.path, params={**DEMO.params, "methods": "a"}
    )
    assert MetadataInfo.of("demo", [more]).revision != MetadataInfo.of("demo", [DEMO]).revision


# -- JSON: the metadata report ---------------------------------------------------------------------------

# What the report holds for app "demo" with DEMO and GROUPED, written out by hand from the serialisable
# fields of MetadataInfo/ServiceInfo (nulls left out), plus keys a getter-based JSON library adds
# ("serviceKey", "matchKey"), which Java's reader ignores and so does regproxy's.
REPORT = """{
  "app": "demo",
  "revision": "c0ffee",
  "services": {
    "com.x.DemoService:dubbo": {
      "name": "com.x.DemoService", "protocol": "dubbo", "port": 20880, "path": "com.x.DemoService",
      "params": {"application": "demo", "methods": "sayHello,sayHi", "side": "provider"},
      "serviceKey": "com.x.DemoService", "matchKey": "com.x.DemoService:dubbo"
    },
    "g/com.x.Svc:1.0.0:tri": {
      "name": "com.x.Svc", "group": "g", "version": "1.0.0", "protocol": "tri", "port": 50051,
      "path": "com.x.Svc", "params": {}
    }
  }
}"""


def test_parse_report_json() -> None:
    info = parse_json(REPORT)
    assert info == MetadataInfo(
        "demo", "c0ffee", {"com.x.DemoService:dubbo": DEMO, "g/com.x.Svc:1.0.0:tri": GROUPED}
    )
    # the revision a document carries is kept as it is; the calculated one is separate
    assert info.calculated_revision() == MetadataInfo.of("demo", [DEMO, GROUPED]).revision


def test_parse_defaults_absent_fields_as_java_does() -> None:
    info = parse_json('{"services": {"k": {"name": "com.x.Svc"}}}')
    assert info == MetadataInfo(None, None, {"k": BARE})
    assert parse_json(b"{}") == MetadataInfo(None, None, {})


def test_dump_json_exact_and_round_trip() -> None:
    info = MetadataInfo.of("demo", [DEMO, BARE])
    text = dump_json(info)
    assert text == (
        '{"app":"demo","revision":"' + info.calculated_revision() + '","services":{'
        '"com.x.DemoService:dubbo":{"name":"com.x.DemoService","protocol":"dubbo","port":20880,'
        '"path":"com.x.DemoService","params":{"side":"provider","application":"demo","methods":"sayHello,sayHi"}},'
        '"com.x.Svc":{"name":"com.x.Svc","port":-1,"params":{}}}}'
    )
    assert parse_json(text) == info
    wide = MetadataInfo.of("\u5e94\u7528", [WIDE])
    assert parse_json(dump_json(wide).encode()) == wide


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "metadata is not JSON"),
        ("[]", "metadata: expected a JSON object, got list"),
        ('{"app": 1}', "app: expected a string, got int"),
        ('{"revision": {}}', "revision: expected a string, got dict"),
        ('{"services": []}', "services: expected a map, got list"),
        ('{"services": {"k": "x"}}', "services['k']: expected an object, got str"),
        ('{"services": {"k": {"name": ["x"]}}}', "services['k'].name: expected a string, got list"),
        ('{"services": {"k": {"protocol": 1}}}', "services['k'].protocol: expected a string, got int"),
        ('{"services": {"k": {"port": "20880"}}}', "services['k'].port: expected a Java int, got '20880'"),
        (
            '{"services": {"k": {"port": 2147483648}}}',
            "services['k'].port: expected a Java int, got 2147483648",
        ),
        ('{"services": {"k": {"port": true}}}', "services['k'].port: expected a Java int, got True"),
        ('{"services": {"k": {"port": 1.5}}}', "services['k'].port: expected a Java int, got 1.5"),
        ('{"services": {"k": {"params": []}}}', "services['k'].params: expected a map of strings, got list"),
        (
            '{"services": {"k": {"params": {"a": 1}}}}',
            "services['k'].params['a']: expected a string, got int",
        ),
        (
            '{"services": {"k": {"params": {"a": null}}}}',
            "services['k'].params['a']: expected a string, got NoneType",
        ),
    ],
)
def test_malformed_json_names_the_field(text: str, message: str) -> None:
    with pytest.raises(MetadataInfoError) as caught:
        parse_json(text)
    assert str(caught.value) == message or (
        message.endswith("JSON") and str(caught.value).startswith(message)
    )


# -- hessian2: the Java object MetadataService.getMetadataInfo returns -----------------------------------

# The instance HessianMain.java writes (below), as regproxy's model.
JAVA_DESC = ServiceInfo(
    "com.x.DemoService",
    protocol="dubbo",
    port=20880,
    path="com.x.DemoService",
    params={
        "application": "demo",
        "desc": "\u4e2d\u6587 \U0001f600",
        "methods": "sayHello,sayHi",
        "side": "provider",
    },
)
# revision: MD5 of "democom.x.DemoService:dubbo20880com.x.DemoService{application=demo, desc=中文 😀,
# methods=sayHello,sayHi, side=provider}g/com.x.Svc:1.0.0:tri50051com.x.Svc{}" (printf | md5sum)
JAVA_REVISION = "055eba97aa88a20860d634a0c4933b1d"
JAVA_INFO = MetadataInfo(
    "demo", JAVA_REVISION, {"com.x.DemoService:dubbo": JAVA_DESC, "g/com.x.Svc:1.0.0:tri": GROUPED}
)

# What Caucho Hessian 4.0.38 (OpenJDK 17) wrote for that instance: HessianMain's `write` output.  The
# services map is a ConcurrentHashMap (typed map 'M'), as MetadataInfo's constructor makes it; params
# HashMaps (untyped 'H'), as ServiceInfo.extractServiceParams makes them.
CAUCHO_HEX = (
    "4330266f72672e6170616368652e647562626f2e6d657461646174612e4d65746164617461496e666f930361707008726576"
    "6973696f6e087365727669636573600464656d6f302030353565626139376161383861323038363064363334613063343933"
    "336231644d30266a6176612e7574696c2e636f6e63757272656e742e436f6e63757272656e74486173684d617017636f6d2e"
    "782e44656d6f536572766963653a647562626f4330326f72672e6170616368652e647562626f2e6d657461646174612e4d65"
    "746164617461496e666f2453657276696365496e666f97046e616d650567726f75700776657273696f6e0870726f746f636f"
    "6c04706f7274047061746806706172616d736111636f6d2e782e44656d6f536572766963654e4e05647562626fd451901163"
    "6f6d2e782e44656d6f536572766963654804736964650870726f76696465720b6170706c69636174696f6e0464656d6f076d"
    "6574686f64730e73617948656c6c6f2c7361794869046465736305e4b8ade6968720eda0bdedb8805a15672f636f6d2e782e"
    "5376633a312e302e303a7472696109636f6d2e782e537663016705312e302e3003747269d4c38309636f6d2e782e53766348"
    "5a5a"
)


def test_caucho_bytes_decode_to_the_model() -> None:
    value = decode_value(bytes.fromhex(CAUCHO_HEX))
    assert value.class_name == METADATA_INFO_CLASS
    # only the non-transient fields travel, in declaration order (rawMetadataInfo, matchKey... do not)
    assert list(value.fields) == ["app", "revision", "services"]
    service = next(iter(value.fields["services"].values()))
    assert service.class_name == SERVICE_INFO_CLASS
    assert list(service.fields) == ["name", "group", "version", "protocol", "port", "path", "params"]
    assert from_java_object(value) == JAVA_INFO
    assert from_java_object(value).calculated_revision() == JAVA_REVISION


def test_to_java_object_round_trips_through_regproxys_codec() -> None:
    for _, services, _, _ in REVISIONS:
        info = MetadataInfo.of("app", services)
        assert from_java_object(decode_value(encode_value(to_java_object(info)))) == info
    assert to_java_object(MetadataInfo.of("app", [BARE])) == JavaObject(
        METADATA_INFO_CLASS,
        {
            "app": "app",
            "revision": "03316722caf8edd2a3659f8625591889",
            "services": {
                "com.x.Svc": JavaObject(
                    SERVICE_INFO_CLASS,
                    {
                        "name": "com.x.Svc",
                        "group": None,
                        "version": None,
                        "protocol": None,
                        "port": -1,
                        "path": None,
                        "params": {},
                    },
                )
            },
        },
    )


def test_java_object_missing_and_unknown_fields_as_java_reads_them() -> None:
    value = JavaObject(
        METADATA_INFO_CLASS,
        {"app": "a", "extra": 1, "services": {"k": JavaObject(SERVICE_INFO_CLASS, {"name": "com.x.Svc"})}},
    )
    assert from_java_object(value) == MetadataInfo("a", None, {"k": BARE})
    assert from_java_object(JavaObject(METADATA_INFO_CLASS, {"services": None})) == MetadataInfo(None, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"app": "a"}, f"metadata: expected an object of class {METADATA_INFO_CLASS}, got dict"),
        (JavaObject("x.Y"), f"metadata: expected an object of class {METADATA_INFO_CLASS}, got x.Y"),
        (JavaObject(METADATA_INFO_CLASS, {"app": 1}), "app: expected a string, got int"),
        (JavaObject(METADATA_INFO_CLASS, {"services": ["x"]}), "services: expected a map, got list"),
        (
            JavaObject(METADATA_INFO_CLASS, {"services": {"k": {"name": "n"}}}),
            f"services['k']: expected an object of class {SERVICE_INFO_CLASS}, got dict",
        ),
        (
            JavaObject(
                METADATA_INFO_CLASS, {"services": {"k": JavaObject(SERVICE_INFO_CLASS, {"port": 2**40})}}
            ),
            f"services['k'].port: expected a Java int, got {2**40}",
        ),
    ],
)
def test_malformed_java_object_names_the_field(value: object, message: str) -> None:
    with pytest.raises(MetadataInfoError) as caught:
        from_java_object(value)
    assert str(caught.value) == message


# -- against Java's own Caucho Hessian -------------------------------------------------------------------

HESSIAN_JAR = Path("/usr/share/java/hessian.jar")  # Debian's libhessian-java (scripts/test-deps.sh)
JAVA_OPENS = [
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
]

# MetadataInfo and ServiceInfo with Dubbo 3.3's package, class, field names, field types and transient
# markers (transient fields kept to show they are not written); calRevision and toDescString copy
# Dubbo's calAndGetRevision, ServiceInfo.toDescString/getMatchKey, BaseServiceMetadata.buildServiceKey
# and MD5Utils.getMd5, so Java's own TreeMap and String order check regproxy's revision.
JAVA_METADATA_INFO = r"""
package org.apache.dubbo.metadata;

import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Collections;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;

public class MetadataInfo implements Serializable {
    private String app;
    private volatile String revision;
    private final Map<String, ServiceInfo> services;
    private transient volatile String rawMetadataInfo = "transient: never written";
    private final transient Map<String, String> instanceParams = new ConcurrentHashMap<>();

    public MetadataInfo() { this(null, null, null); }

    public MetadataInfo(String app, String revision, Map<String, ServiceInfo> services) {
        this.app = app;
        this.revision = revision;
        this.services = services == null ? new ConcurrentHashMap<>() : services;
    }

    public String calRevision() throws Exception {
        if (services == null || services.isEmpty()) return "0";
        StringBuilder sb = new StringBuilder();
        sb.append(app);
        for (Map.Entry<String, ServiceInfo> entry : new TreeMap<>(services).entrySet()) {
            sb.append(entry.getValue().toDescString());
        }
        byte[] md5 = MessageDigest.getInstance("MD5").digest(sb.toString().getBytes(StandardCharsets.UTF_8));
        StringBuilder hex = new StringBuilder();
        for (byte b : md5) hex.append(String.format("%02x", b));
        return hex.toString();
    }

    public String describe() throws Exception {
        StringBuilder out = new StringBuilder();
        out.append(getClass().getName()).append(" app=").append(app).append(" revision=").append(revision)
            .append(" calculated=").append(calRevision());
        for (Map.Entry<String, ServiceInfo> entry : new TreeMap<>(services).entrySet()) {
            out.append("\n  ").append(entry.getKey()).append(" -> ").append(entry.getValue().describe());
        }
        return out.toString();
    }

    public static class ServiceInfo implements Serializable {
        private String name;
        private String group;
        private String version;
        private String protocol;
        private int port = -1;
        private String path;
        private Map<String, String> params;
        private transient volatile String serviceKey;
        private transient volatile String matchKey;

        public ServiceInfo() {}

        public ServiceInfo(String name, String group, String version, String protocol, int port, String path,
                           Map<String, String> params) {
            this.name = name;
            this.group = group;
            this.version = version;
            this.protocol = protocol;
            this.port = port;
            this.path = path;
            this.params = params;
            this.matchKey = getMatchKey();
        }

        String getServiceKey() {
            StringBuilder buf = new StringBuilder();
            if (group != null && !group.isEmpty()) buf.append(group).append('/');
            buf.append(name);
            if (version != null && !version.isEmpty()) buf.append(':').append(version);
            return buf.toString();
        }

        String getMatchKey() {
            String serviceKey = getServiceKey();
            return protocol != null && !protocol.isEmpty() ? serviceKey + ":" + protocol : serviceKey;
        }

        Map<String, String> getParams() { return params == null ? Collections.emptyMap() : params; }

        String toDescString() { return this.getMatchKey() + port + path + new TreeMap<>(getParams()); }

        String describe() {
            return getClass().getName() + " name=" + name + " group=" + group + " version=" + version
                + " protocol=" + protocol + " port=" + port + " path=" + path
                + " params=" + new TreeMap<>(getParams());
        }
    }
}
"""

# `write`: prints the hex of JAVA_INFO as Hessian2Output writes it.  `read`: reads one hex MetadataInfo a
# line from stdin with Hessian2Input and prints its description (UTF-8).
JAVA_MAIN = r"""
import com.caucho.hessian.io.Hessian2Input;
import com.caucho.hessian.io.Hessian2Output;
import org.apache.dubbo.metadata.MetadataInfo;
import org.apache.dubbo.metadata.MetadataInfo.ServiceInfo;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

public class HessianMain {
    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        if (args[0].equals("write")) {
            Map<String, String> demo = new HashMap<>();
            demo.put("application", "demo");
            demo.put("desc", "\u4e2d\u6587 \ud83d\ude00");
            demo.put("methods", "sayHello,sayHi");
            demo.put("side", "provider");
            Map<String, ServiceInfo> services = new ConcurrentHashMap<>();
            services.put("com.x.DemoService:dubbo",
                new ServiceInfo("com.x.DemoService", null, null, "dubbo", 20880, "com.x.DemoService", demo));
            services.put("g/com.x.Svc:1.0.0:tri",
                new ServiceInfo("com.x.Svc", "g", "1.0.0", "tri", 50051, "com.x.Svc", new HashMap<>()));
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            Hessian2Output h = new Hessian2Output(bytes);
            h.writeObject(new MetadataInfo("demo", "055eba97aa88a20860d634a0c4933b1d", services));
            h.flush();
            StringBuilder hex = new StringBuilder();
            for (byte b : bytes.toByteArray()) hex.append(String.format("%02x", b));
            out.println(hex);
            return;
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            byte[] data = new byte[line.length() / 2];
            for (int i = 0; i < data.length; i++) {
                data[i] = (byte) Integer.parseInt(line.substring(2 * i, 2 * i + 2), 16);
            }
            Object value = new Hessian2Input(new ByteArrayInputStream(data)).readObject();
            out.println(((MetadataInfo) value).describe());
        }
    }
}
"""


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac = shutil.which("javac")
    assert javac and HESSIAN_JAR.is_file(), "javac and Caucho Hessian are needed: run scripts/test-deps.sh"
    src = tmp_path_factory.mktemp("metadata-java")
    (src / "MetadataInfo.java").write_text(JAVA_METADATA_INFO, encoding="utf-8")
    (src / "HessianMain.java").write_text(JAVA_MAIN, encoding="utf-8")
    classes = src / "classes"
    subprocess.run(
        [javac, "-encoding", "UTF-8", "-cp", str(HESSIAN_JAR), "-d", str(classes),
         str(src / "MetadataInfo.java"), str(src / "HessianMain.java")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return classes


def _java(classes: Path, mode: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["java", *JAVA_OPENS, "-cp", f"{classes}:{HESSIAN_JAR}", "HessianMain", mode],
        input=stdin.encode(), capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("utf-8")


def _java_describe(info: MetadataInfo) -> str:
    """What HessianMain prints for ``info``: Java's toString of each field, TreeMaps for the maps."""

    def j(text: str | None) -> str:  # a null String concatenates as "null"
        return "null" if text is None else text

    head = f"{METADATA_INFO_CLASS} app={j(info.app)} revision={j(info.revision)}"
    lines = [f"{head} calculated={info.calculated_revision()}"]
    for key in sorted(info.services, key=lambda k: k.encode("utf-16-be", "surrogatepass")):
        s = info.services[key]
        lines.append(
            f"  {key} -> {SERVICE_INFO_CLASS} name={j(s.name)} group={j(s.group)} version={j(s.version)}"
            f" protocol={j(s.protocol)} port={s.port} path={j(s.path)} params={java_map_string(s.params)}"
        )
    return "\n".join(lines)


@pytest.mark.process
def test_java_writes_the_pinned_bytes_and_regproxy_reads_them(java_classes: Path) -> None:
    written = _java(java_classes, "write").strip()
    assert written == CAUCHO_HEX
    assert from_java_object(decode_value(bytes.fromhex(written))) == JAVA_INFO


@pytest.mark.process
def test_java_reads_regproxys_bytes(java_classes: Path) -> None:
    infos = [MetadataInfo.of(app, services) for app, services, _, _ in REVISIONS]
    infos.append(JAVA_INFO)
    stdin = "".join(encode_value(to_java_object(info)).hex() + "\n" for info in infos)
    printed = _java(java_classes, "read", stdin)
    assert printed == "".join(_java_describe(info) + "\n" for info in infos)
    # Java's own TreeMap/MD5 gives each row's hand-computed revision
    calculated = [line.split("calculated=")[1] for line in printed.splitlines() if "calculated=" in line]
    assert calculated == [revision for _, _, _, revision in REVISIONS] + [JAVA_REVISION]
