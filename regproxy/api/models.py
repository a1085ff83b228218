"""Request and reply models of the pub/sub HTTP API, and the name rules they enforce.

This is a security boundary: interface, version, group, method and parameter names end up in
ZooKeeper paths and Dubbo URL parameters, so everything is checked against a strict allow-list
here, before any of it reaches a registry adapter. The rules are deliberately narrower than what
Dubbo tolerates (ASCII only, no '/', '&', '=', spaces, '..', control characters): a name that
real Java services use always fits, and nothing else gets through.

The body shape is the one SDKs already send to sidecars of this kind
(``{"registry": {"type", "addr"}, "service": {"interface", "methods", ...}}``). Unknown keys are
refused, naming the key and the nearest known one (``service.versoin: unknown field (did you mean
'version'?)``): a typo must not publish something else and report success. Every key MOSN's dubbod
takes is one of ours (see MOSN_FIELDS). Every rejection names the field (``service.version: ...``).

Nothing here does I/O; ``regproxy.api.http`` turns the validated models into Discovery calls.
"""

from __future__ import annotations

import difflib
import re
import sys
from enum import IntEnum
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlencode

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from regproxy.config import MAX_WEIGHT
from regproxy.governance.params import declaration_error
from regproxy.registry.registry_url import RegistryURL
from regproxy.tls import TLS_PARAM

__all__ = [
    "MAX_APPLICATION",
    "MAX_GROUP",
    "MAX_INTERFACE",
    "MAX_METHODS",
    "MAX_NAME",
    "MAX_PARAMS",
    "MAX_PARAM_VALUE",
    "MAX_VERSION",
    "MOSN_FIELDS",
    "ErrNo",
    "ErrorReply",
    "OkReply",
    "Provider",
    "PubReply",
    "PubRequest",
    "PubService",
    "RegistryRef",
    "SubReply",
    "SubRequest",
    "SubService",
    "check_application",
    "check_group",
    "check_interface",
    "check_method",
    "check_param_key",
    "check_param_value",
    "check_version",
    "describe_errors",
]


class ErrNo(IntEnum):
    """``err_no`` of every reply; 0 is success. Stable: SDKs and scripts compare against these."""

    OK = 0
    BAD_REQUEST = 1  # 400: not JSON, a missing or illegal field, a value Discovery refused
    NOT_FOUND = 2  # 404: unpub/unsub of something not published/subscribed, or an unknown path
    REGISTRY_UNAVAILABLE = 3  # 503: the registry is not connected right now
    REGISTRY_ERROR = 4  # 502: the registry refused or failed the operation
    INTERNAL = 5  # 500: a bug in regproxy (details only in its log)
    TOO_LARGE = 6  # 413: request body over the limit (64 KiB)
    METHOD_NOT_ALLOWED = 7  # 405: e.g. GET /pub
    UNAUTHORIZED = 8  # 401: auth_token is set and the request carries no token
    FORBIDDEN = 9  # 403: a wrong token, or a web browser's request (Origin) without auth_token
    STATE_NOT_SAVED = 10  # 503: the change is in effect but could not be written to data_dir


ERR_NO_DOC: dict[ErrNo, str] = {
    ErrNo.OK: "success (HTTP 200)",
    ErrNo.BAD_REQUEST: "not JSON, or a missing or illegal field; err_msg names the field (HTTP 400)",
    ErrNo.NOT_FOUND: "not published / not subscribed by this sidecar, or no such endpoint (HTTP 404)",
    ErrNo.REGISTRY_UNAVAILABLE: "the registry is not connected right now; retry later (HTTP 503)",
    ErrNo.REGISTRY_ERROR: "the registry refused or failed the operation (HTTP 502)",
    ErrNo.INTERNAL: "unexpected error inside regproxy; details in its log (HTTP 500)",
    ErrNo.TOO_LARGE: "request body larger than the limit (HTTP 413)",
    ErrNo.METHOD_NOT_ALLOWED: "HTTP method not allowed on this path (HTTP 405)",
    ErrNo.UNAUTHORIZED: "auth_token is set: send Authorization: Bearer TOKEN (HTTP 401)",
    ErrNo.FORBIDDEN: "wrong token, or a web browser's request without auth_token (HTTP 403)",
    ErrNo.STATE_NOT_SAVED: "the change is in effect but could not be saved to the data directory "
    "(a full disk); a restart would lose it until a save succeeds, which regproxy retries (HTTP 503)",
}

# --------------------------------------------------------------------------------------------------
# Name rules

MAX_INTERFACE = 255
MAX_VERSION = 64
MAX_GROUP = 128  # the whole value, comma lists included
MAX_APPLICATION = 128
MAX_NAME = 255  # one method name
MAX_METHODS = 1024
MAX_PARAMS = 128
MAX_PARAM_KEY = 128
MAX_PARAM_VALUE = 4096

_JAVA_IDENT = r"[A-Za-z_$][A-Za-z0-9_$]*"
_JAVA_IDENT_RE = re.compile(rf"{_JAVA_IDENT}\Z")
_JAVA_QNAME_PATTERN = rf"^{_JAVA_IDENT}(?:\.{_JAVA_IDENT})*$"  # as published in the OpenAPI document
_JAVA_QNAME_RE = re.compile(rf"{_JAVA_IDENT}(?:\.{_JAVA_IDENT})*\Z")
_TOKEN = r"[A-Za-z0-9._-]+"
_TOKEN_RE = re.compile(rf"{_TOKEN}\Z")
_IDENT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# The same rules as JSON-schema patterns for the OpenAPI document, so a client generating requests
# from it (or schemathesis) finds no request the schema allows and the API refuses. A token here
# is [A-Za-z0-9._-]+ without "..": runs of the other characters joined by single dots.
_TOKEN_PATTERN = r"(?:\.?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\.)"
_IDENT_PATTERN = r"[A-Za-z_$][A-Za-z0-9_$]{0,254}"  # a method name, MAX_NAME characters at most
_PORT_PATTERN = r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_NO_CONTROL_PATTERN = "^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
# C0, DEL and C1 controls, plus the Unicode line/paragraph separators that some readers treat as
# newlines: none belongs in a URL parameter, and a newline would forge a line in logs.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Parameters that have a field of their own (or that regproxy sets) and must not be overridden
# through ``params``: a stray ``category=consumers`` would hide the provider from every consumer.
_RESERVED_PARAMS: dict[str, str] = {
    "interface": "use service.interface",
    "version": "use service.version",
    "group": "use service.group",
    "methods": "use service.methods",
    "application": "use service.application",
    "side": "regproxy sets it",
    "category": "regproxy sets it",
    TLS_PARAM: "regproxy sets it from its tls config",
}


def _short(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _bad_char(value: str, allowed: frozenset[str]) -> str:
    """Why ``value`` has a character outside ``allowed``, naming the first one."""
    for ch in value:
        if ch in allowed:
            continue
        if ch == " ":
            return "spaces are not allowed"
        if _CONTROL_RE.match(ch):
            return "control characters are not allowed"
        if not ch.isascii():
            return f"non-ASCII character {ch!r} is not allowed"
        return f"{ch!r} is not allowed"
    return "malformed"


def check_interface(value: str) -> str:
    """A Java qualified name: identifiers joined by single dots. ValueError says why not."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_INTERFACE:
        raise ValueError(f"longer than {MAX_INTERFACE} characters")
    if _JAVA_QNAME_RE.match(value):
        return value
    what = f"{_short(value)} is not a Java interface name"
    bad = set(value) - _IDENT_CHARS - {"."}
    if bad:
        raise ValueError(f"{what}: {_bad_char(value, _IDENT_CHARS | {'.'})}")
    if ".." in value:
        raise ValueError(f"{what}: '..' (empty name segment) is not allowed")
    if value.startswith(".") or value.endswith("."):
        raise ValueError(f"{what}: it must not start or end with '.'")
    raise ValueError(f"{what}: a name segment must not start with a digit")


def _check_token(value: str, what: str) -> None:
    if not _TOKEN_RE.match(value):
        raise ValueError(f"{_short(value)} is not a valid {what}: {_bad_char(value, _TOKEN_CHARS)}")
    if ".." in value:
        raise ValueError(f"{_short(value)} is not a valid {what}: '..' is not allowed")


def check_version(value: str, *, allow_any: bool) -> str:
    """``[A-Za-z0-9._-]+``, "" (no version) or, when ``allow_any``, "*" (any version)."""
    if value == "":
        return value
    if len(value) > MAX_VERSION:
        raise ValueError(f"longer than {MAX_VERSION} characters")
    if value == "*":
        if allow_any:
            return value
        raise ValueError("'*' means any version and is only for /sub; a published service has one version")
    _check_token(value, "version")
    return value


def check_group(value: str, *, allow_many: bool) -> str:
    """``[A-Za-z0-9._-]+`` or "" (no group); with ``allow_many`` also "*" or a comma list."""
    if value == "":
        return value
    if len(value) > MAX_GROUP:
        raise ValueError(f"longer than {MAX_GROUP} characters")
    if value == "*" or "," in value:
        if not allow_many:
            raise ValueError(
                "'*' and comma lists are only for /sub; a published service has one group"
                if value == "*"
                else f"{_short(value)}: a published service has one group (comma lists are only for /sub)"
            )
        if value == "*":
            return value
        for part in value.split(","):
            if not part:
                raise ValueError(f"{_short(value)}: empty group in the comma list")
            if part == "*":
                raise ValueError(f"{_short(value)}: '*' cannot be part of a comma list (use it alone)")
            _check_token(part, "group")
        return value
    _check_token(value, "group")
    return value


def check_method(value: str) -> str:
    """A Java method name, or "*" (a generic service's wildcard)."""
    if value == "*":
        return value
    if len(value) > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} characters")
    if not _JAVA_IDENT_RE.match(value):
        bad = set(value) - _IDENT_CHARS
        reason = _bad_char(value, _IDENT_CHARS) if bad else "it must not start with a digit"
        raise ValueError(f"{_short(value)} is not a Java method name: {reason}")
    return value


def check_application(value: str) -> str:
    if value == "":
        return value
    if len(value) > MAX_APPLICATION:
        raise ValueError(f"longer than {MAX_APPLICATION} characters")
    _check_token(value, "application name")
    if value in (".", ".."):
        # The name of a folder: /services/<application> (Dubbo 3's instances, docs/discovery.md).
        raise ValueError(f"{value!r} is not an application name")
    return value


def check_param_key(key: str) -> str:
    if not key:
        raise ValueError("empty parameter name")
    if len(key) > MAX_PARAM_KEY:
        raise ValueError(f"parameter name {_short(key)} is longer than {MAX_PARAM_KEY} characters")
    _check_token(key, "parameter name")
    reason = _RESERVED_PARAMS.get(key)
    if reason:
        raise ValueError(f"parameter {key!r} cannot be set here ({reason})")
    return key


def check_param_value(key: str, value: str) -> str:
    if len(value) > MAX_PARAM_VALUE:
        raise ValueError(f"value of {key!r} is longer than {MAX_PARAM_VALUE} characters")
    if _CONTROL_RE.search(value):
        raise ValueError(f"value of {key!r}: control characters are not allowed")
    if key == "weight" and not (value.isascii() and value.isdigit() and int(value) <= MAX_WEIGHT):
        raise ValueError(f"weight must be a whole number 0-{MAX_WEIGHT} (got {_short(value)})")
    problem = declaration_error(key, value)  # the Dubbo parameters regproxy acts on (docs/parameters.md)
    if problem is not None:
        raise ValueError(problem)
    return value


# --------------------------------------------------------------------------------------------------
# Pydantic glue: each rule becomes an annotated type whose errors carry the rule's own message.


def _rule(fn: Any, *args: Any, **kwargs: Any) -> AfterValidator:
    def validate(value: Any) -> Any:
        try:
            return fn(value, *args, **kwargs)
        except ValueError as e:
            raise PydanticCustomError("name", str(e)) from None

    return AfterValidator(validate)


def _none_to_empty(value: Any) -> Any:
    # SDKs written in typed languages send null (or "") for a field they do not set.
    return "" if value is None else value


def _methods_in(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")  # "a,b" is how some SDKs (and Dubbo's own URL) spell the list
    if isinstance(value, list):
        # The reference SDK sends [""] for "no methods"; empty names mean nothing, drop them.
        return [m for m in value if m != ""]
    return value


def _methods_out(value: list[str]) -> tuple[str, ...]:
    if len(value) > MAX_METHODS:
        raise PydanticCustomError("name", f"more than {MAX_METHODS} methods")
    if "*" in value and len(set(value)) > 1:  # ["*", "*"] is still just "*"
        raise PydanticCustomError("name", "'*' cannot be combined with method names")
    # One spelling per method set, so the same service published twice is the same publication.
    return tuple(sorted(set(value)))


def _port(value: Any) -> Any:
    if value is None or value == "":
        return None  # the application's default port (--app-port)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 20880.0 is the integer 20880 in JSON (and in the OpenAPI schema)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("port", "must be a whole number 1-65535 (or a string of digits)")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 5):
            raise PydanticCustomError("port", f"{_short(value)} is not a port number (1-65535)")
        value = int(value)
    if not 1 <= value <= 65535:
        raise PydanticCustomError("port", f"{value} is out of range (1-65535)")
    return value


def _params(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PydanticCustomError("params", "must be an object of name: value")
    if len(value) > MAX_PARAMS:
        raise PydanticCustomError("params", f"more than {MAX_PARAMS} parameters")
    out: dict[str, str] = {}
    for key, raw in value.items():
        try:
            check_param_key(key)
            if isinstance(raw, bool):
                text = "true" if raw else "false"  # as Java would print it
            elif isinstance(raw, float) and raw.is_integer() and abs(raw) < 2**53:
                text = str(int(raw))  # 5.0 is the integer 5 in JSON; Java's parseInt refuses "5.0"
            elif isinstance(raw, int | float):
                text = str(raw)
            elif isinstance(raw, str):
                text = raw
            else:
                raise ValueError(f"value of {key!r} must be a string, number or boolean")
            out[key] = check_param_value(key, text)
        except ValueError as e:
            raise PydanticCustomError("params", str(e)) from None
    return out


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Interface = Annotated[
    str,
    _rule(check_interface),
    Field(
        description="Java interface name, e.g. com.example.DemoService",
        json_schema_extra={"pattern": _JAVA_QNAME_PATTERN, "maxLength": MAX_INTERFACE},
    ),
]


def _optional_text(rule: AfterValidator, pattern: str, max_length: int, description: str) -> Any:
    """A name the SDKs may send as null or "" (meaning none), validated by ``rule``; the schema
    says the same as the rule, so schema-driven clients and fuzzers see what the API accepts."""
    return Annotated[
        str,
        BeforeValidator(_none_to_empty),
        rule,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": f"^{pattern}$", "maxLength": max_length},
                    {"type": "null"},
                ],
                "description": description,
            }
        ),
    ]


PubVersion = _optional_text(
    _rule(check_version, allow_any=False),
    f"{_TOKEN_PATTERN}?",
    MAX_VERSION,
    'service version; "" or null for none',
)
SubVersion = _optional_text(
    _rule(check_version, allow_any=True),
    f"(?:\\*|{_TOKEN_PATTERN})?",
    MAX_VERSION,
    'version to match; "" (or "0.0.0") or null for none, "*" for any',
)
PubGroup = _optional_text(
    _rule(check_group, allow_many=False),
    f"{_TOKEN_PATTERN}?",
    MAX_GROUP,
    'Dubbo group; "" or null for none',
)
SubGroup = _optional_text(
    _rule(check_group, allow_many=True),
    f"(?:\\*|{_TOKEN_PATTERN}(?:,{_TOKEN_PATTERN})*)?",
    MAX_GROUP,
    'group to match; "" or null for none, "*" for any, or a comma list such as "a,b"',
)
Methods = Annotated[
    list[Annotated[str, _rule(check_method)]],
    BeforeValidator(_methods_in),
    AfterValidator(_methods_out),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string", "pattern": f"^(?:{_IDENT_PATTERN})?$"}},
                {"type": "array", "items": {"type": "string", "enum": ["*", ""]}},
                {
                    "type": "string",
                    "description": "comma-separated method names",
                    "pattern": f"^(?:(?:{_IDENT_PATTERN})?(?:,(?:{_IDENT_PATTERN})?)*|\\*?(?:,\\*?)*)$",
                },
                {"type": "null"},
            ],
            "description": f'method names (Java identifiers, at most {MAX_METHODS}) or ["*"]; empty names '
            "are dropped",
        }
    ),
]
Port = Annotated[
    int | None,
    BeforeValidator(_port),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": f"^(?:{_PORT_PATTERN})?$", "maxLength": 5},
                {"type": "null"},
            ],
            "description": 'the application\'s real Dubbo port; absent, null or "" means --app-port',
        }
    ),
]
Application = Annotated[
    str,
    BeforeValidator(_none_to_empty),
    _rule(check_application),
    WithJsonSchema(
        {
            "anyOf": [
                # Neither "." nor "..": a folder's name in ZooKeeper (/services/<application>).
                {"type": "string", "pattern": f"^(?!\\.$){_TOKEN_PATTERN}?$", "maxLength": MAX_APPLICATION},
                {"type": "null"},
            ],
            "description": "application name shown in the registry; regproxy's own when empty or null",
        }
    ),
]


def _params_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "object",
                    "maxProperties": MAX_PARAMS,
                    "propertyNames": {
                        "pattern": f"^{_TOKEN_PATTERN}$",
                        "maxLength": MAX_PARAM_KEY,
                        "not": {"enum": sorted(_RESERVED_PARAMS)},
                    },
                    "properties": {
                        "weight": {
                            "anyOf": [
                                {
                                    "type": "string",
                                    "pattern": f"^0*(?:{MAX_WEIGHT}|[0-9]{{1,{len(str(MAX_WEIGHT)) - 1}}})$",
                                },
                                {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT},
                            ]
                        }
                    },
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string", "maxLength": MAX_PARAM_VALUE, "pattern": _NO_CONTROL_PATTERN},
                            {"type": "boolean"},
                            # Any JSON number that is a finite double (larger integers become doubles).
                            {"type": "number", "minimum": -sys.float_info.max, "maximum": sys.float_info.max},
                        ]
                    },
                },
                {"type": "null"},
            ],
            "description": description,
        }
    )


Params = Annotated[
    dict[str, str],
    BeforeValidator(_params),
    _params_schema(
        "extra provider URL parameters (e.g. weight, timeout); numbers and booleans become strings; "
        "names match [A-Za-z0-9._-]+; interface, version, group, methods, application, side and "
        "category are refused"
    ),
]
ConsumerParams = Annotated[
    dict[str, str],
    BeforeValidator(_params),
    _params_schema(
        "the consumer's own parameters (its reference config), on the consumer:// URL regproxy "
        "registers and what condition rules match (e.g. env: gray); numbers and booleans become "
        "strings; names match [A-Za-z0-9._-]+; interface, version, group, methods, application, side "
        "and category are refused"
    ),
]


PubProtocol = Annotated[
    Literal["dubbo", "tri"],
    BeforeValidator(lambda v: "dubbo" if v in (None, "") else v),
    WithJsonSchema(
        {
            "anyOf": [{"enum": ["dubbo", "tri"]}, {"type": "null"}],
            "description": "the protocol the application serves this service in on its port: dubbo "
            "(default) or tri (Triple, gRPC over HTTP/2); the URL registered is dubbo:// or tri:// "
            "at the ingress, which takes both",
        }
    ),
]

Migration = Annotated[
    Literal["", "interface", "application", "both"],
    BeforeValidator(_none_to_empty),
    WithJsonSchema(
        {
            "anyOf": [{"enum": ["interface", "application", "both", ""]}, {"type": "null"}],
            "description": "where the providers are found: interface-level nodes, Dubbo 3 application "
            'instances, or both (one host per address); "" or null: the consumer\'s migration.step '
            "param, else regproxy's discovery.migration (docs/discovery.md)",
        }
    ),
]


# The request fields of MOSN's dubbod (the sidecar the SDKs of this kind were written for), from
# mosn/mosn pkg/upstream/servicediscovery/dubbod/structs.go (pubReq, subReq; at 707d635, and the
# older revisions with service.port and unpubReq/unsubReq). Each must stay a field of the models
# below, or a body those SDKs send would be refused; tests/test_api.py checks it.
MOSN_FIELDS: dict[str, frozenset[str]] = {
    "": frozenset({"registry", "service"}),
    "registry": frozenset({"username", "password", "type", "addr"}),
    "pub.service": frozenset({"interface", "methods", "port", "group", "version"}),
    "sub.service": frozenset({"interface", "methods", "group"}),
}


class _Strict(BaseModel):
    """Unknown keys are refused (``extra_forbidden``; describe_errors names them with a hint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# Registry reference

_ADDR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:[],_-")
_NACOS_ONLY = ("namespace", "group", "username", "password")
_ABSENT = {"enum": ["", None]}
_HOST_PATTERN = r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*|\[[0-9A-Fa-f:.]+\])"
_ONE_ADDR = rf" *{_HOST_PATTERN}(?::{_PORT_PATTERN})? *"
_ADDR_PATTERN = rf"^{_ONE_ADDR}(?:,{_ONE_ADDR})*$"  # spaces around a comma are allowed (see _addr_in)
# What the validator below enforces across fields, in the OpenAPI document: nacos settings only
# for nacos (a password only with a username), hosts for zookeeper and nacos, none for memory.
_REGISTRY_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "nacos"}}},
            "then": {
                "properties": {
                    k: {
                        "anyOf": [
                            {"type": "string", "maxLength": 1024, "pattern": _NO_CONTROL_PATTERN},
                            _ABSENT,
                        ]
                    }
                    for k in _NACOS_ONLY
                },
                "if": {
                    "properties": {"password": {"type": "string", "minLength": 1}},
                    "required": ["password"],
                },
                "then": {
                    "properties": {"username": {"type": "string", "minLength": 1}},
                    "required": ["username"],
                },
            },
            "else": {"properties": {k: _ABSENT for k in _NACOS_ONLY}},
        },
        {
            "if": {"properties": {"type": {"const": "memory"}}},
            "then": {"properties": {"addr": _ABSENT}},
            "else": {
                "properties": {"addr": {"type": "string", "maxLength": 1024, "pattern": _ADDR_PATTERN}},
                "required": ["addr"],
            },
        },
    ]
}


class RegistryRef(_Strict):
    """``registry`` of a request: which registry to use instead of the configured ones."""

    model_config = ConfigDict(json_schema_extra=_REGISTRY_RULES)

    type: Annotated[Literal["zookeeper", "nacos", "memory"], BeforeValidator(_lower)] = Field(
        description="registry kind"
    )
    addr: Annotated[
        str,
        BeforeValidator(_addr_in),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": "^[A-Za-z0-9.:\\[\\],_ -]*$", "maxLength": 1024},
                    {"type": "null"},
                ],
                "description": 'HOST:PORT[,HOST:PORT...] (port defaults to 2181 / 8848); "" for memory. '
                "Without api_allow_body_registries it must name a configured registry (same type "
                "and hosts, in any order; localhost and loopback addresses are one host)",
            }
        ),
    ] = ""
    namespace: str | None = Field(None, description="nacos only: namespace id")
    group: str | None = Field(None, description="nacos only: nacos group (not the Dubbo group)")
    username: str | None = Field(None, description="nacos only")
    password: str | None = Field(
        None, description="nacos only", repr=False, json_schema_extra={"writeOnly": True}
    )

    _url: RegistryURL | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _build(self) -> RegistryRef:
        # Build the URL text and let RegistryURL.parse judge it, so a request and the config file
        # follow exactly the same rules. Only the characters of an address may reach the text: a
        # '?' or '@' in addr would otherwise smuggle parameters or credentials in.
        if len(self.addr) > 1024:
            raise PydanticCustomError("registry", "registry.addr: longer than 1024 characters")
        if set(self.addr) - _ADDR_CHARS:
            reason = _bad_char(self.addr, _ADDR_CHARS)
            raise PydanticCustomError("registry", f"registry.addr: {reason} (expected HOST:PORT[,HOST:PORT])")
        extra = {k: getattr(self, k) for k in _NACOS_ONLY if getattr(self, k) not in (None, "")}
        if extra and self.type != "nacos":
            raise PydanticCustomError(
                "registry", f"registry.{next(iter(extra))}: only a nacos registry takes it"
            )
        for key, value in extra.items():
            if _CONTROL_RE.search(value) or len(value) > 1024:
                raise PydanticCustomError("registry", f"registry.{key}: control characters or too long")
        text = f"{self.type}://{self.addr}" + (f"?{urlencode(extra)}" if extra else "")
        try:
            self._url = RegistryURL.parse(text)
        except ValueError as e:
            raise PydanticCustomError("registry", f"registry: {e}") from None
        return self

    @property
    def url(self) -> RegistryURL:
        assert self._url is not None  # set by the validator
        return self._url


_REGISTRY_KEYS = ("type", "addr", *_NACOS_ONLY)


def _empty_registry(value: Any) -> Any:
    # A typed SDK that has no registry to name sends {"type": "", "addr": ""}: treat it as absent.
    # Only when it has no other key: {"type": "", "adr": "h:1"} is a typo, refused by name.
    if (
        isinstance(value, dict)
        and set(value) <= set(_REGISTRY_KEYS)
        and all(value.get(k) in (None, "") for k in _REGISTRY_KEYS)
    ):
        return None
    return value


def _addr_in(value: Any) -> Any:
    # "h1:2181, h2:2181" is the same host list as "h1:2181,h2:2181": spaces around the commas (and
    # the ends) go; a space inside a host is still refused by the validator below.
    value = _none_to_empty(value)
    if isinstance(value, str) and value.strip(" "):
        if len(value) > 1024:
            raise PydanticCustomError("registry", "registry.addr: longer than 1024 characters")
        value = ",".join(part.strip(" ") for part in value.split(","))
    return value


OptionalRegistry = Annotated[
    RegistryRef | None,
    BeforeValidator(_empty_registry),
    WithJsonSchema(
        {
            "anyOf": [
                {"$ref": "#/components/schemas/RegistryRef"},
                {"type": "null"},
                {
                    "type": "object",
                    "description": "no registry named (every field empty or null): same as null",
                    "properties": {k: _ABSENT for k in _REGISTRY_KEYS},
                    "additionalProperties": False,
                },
            ],
            "description": (
                "registry to use; absent or null: the registries regproxy is configured with. It must "
                "be one of those (400 otherwise, naming them) unless api_allow_body_registries is true"
            ),
        }
    ),
]

# --------------------------------------------------------------------------------------------------
# Requests


class PubService(_Strict):
    interface: Interface
    methods: Methods = ()  # the after-validator turns the list into a sorted tuple
    version: PubVersion = ""
    group: PubGroup = ""
    port: Port = None
    application: Application = ""
    params: Params = Field(default_factory=dict)
    protocol: PubProtocol = "dubbo"


class SubService(_Strict):
    interface: Interface
    version: SubVersion = ""
    group: SubGroup = ""
    methods: Any = Field(None, description="accepted for SDK compatibility and ignored")
    # The consumer's identity for Dubbo's dynamic rules (regproxy.governance): application-scoped
    # rules and application= conditions match on it.
    application: Application = ""
    params: ConsumerParams = Field(default_factory=dict)
    migration: Migration = ""


class PubRequest(_Strict):
    """Body of POST /pub and POST /unpub."""

    registry: OptionalRegistry = None
    service: PubService


class SubRequest(_Strict):
    """Body of POST /sub and POST /unsub."""

    registry: OptionalRegistry = None
    service: SubService


# --------------------------------------------------------------------------------------------------
# Replies (for the OpenAPI document; the handlers write plain dicts with the same keys)


class ErrorReply(BaseModel):
    err_no: int = Field(
        description="non-zero: "
        + "; ".join(f"{int(code)} {code.name} = {doc}" for code, doc in ERR_NO_DOC.items() if code),
        json_schema_extra={"enum": [int(c) for c in ErrNo if c]},
    )
    err_msg: str = Field(description="what went wrong; names the field for bad input")


class OkReply(BaseModel):
    err_no: Literal[0] = 0
    err_msg: str = Field(description='e.g. "publish success", "unsub success"')


class PubReply(OkReply):
    url: str = Field(description="the provider URL registered (advertise IP and ingress port)")
    app_port: int = Field(
        ge=1,
        le=65535,
        description="the application port the ingress forwards this service's calls to: service.port, "
        "or regproxy's app_port (--app-port) when the request gave none",
    )


class Provider(BaseModel):
    model_config = ConfigDict(extra="allow")

    address: str = Field(description="host:port of the provider (its sidecar's ingress)")
    weight: int
    metadata: dict[str, str] = Field(default_factory=dict, description="the provider URL's parameters")


class SubReply(OkReply):
    cluster: str = Field(description="egress cluster of the subscription: group/interface:version")
    providers: list[Provider] = Field(description="providers known when the subscription was made")


# --------------------------------------------------------------------------------------------------
# Error text


def _fields_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """``loc`` without pydantic's names for union branches and validator wrappers."""
    return tuple(
        part
        for part in loc
        if isinstance(part, int)
        or not (part.startswith("function-") or part in ("str", "int", "none", "list[str]", "dict[str,str]"))
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in _fields_loc(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``RegistryRef | None`` -> RegistryRef), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the object at ``loc`` under ``model`` ([] when unknown)."""
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _unknown_field(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str:
    """``unknown field`` and, when a known field is spelled much like it, which one was meant."""
    known = _fields_at(model, loc[:-1])
    name = loc[-1] if loc else ""
    text = "unknown field"
    if isinstance(name, str):
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        if close:
            return f"{text} (did you mean {close[0]!r}?)"
    if known:
        text += f" (known: {', '.join(known)})"
    return text


def describe_errors(exc: ValidationError, limit: int = 5, model: type[BaseModel] | None = None) -> str:
    """``field: problem`` for each error (the first ``limit``), joined by "; ". ``model``: the
    request model that was validated, for the known fields an unknown one is compared with."""
    parts: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _loc(loc)
        kind = err["type"]
        msg = str(err["msg"])
        if kind == "missing":
            msg = "required"
        elif kind == "extra_forbidden":
            msg = _unknown_field(model, _fields_loc(loc))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "must be a JSON object"
        elif kind == "registry":
            path = ""  # the message already starts with registry.<field>
        elif kind in ("string_type", "list_type", "literal_error", "int_type"):
            value = err.get("input")
            if not path.endswith("password") and (value is None or isinstance(value, str | int | float)):
                msg = f"{msg} (got {_json_scalar(value)})"
        if not path and kind != "registry":
            path = "request body"
        line = f"{path}: {msg}" if path else msg
        if line not in seen:
            seen.add(line)
            parts.append(line)
    extra = len(parts) - limit
    text = "; ".join(parts[:limit])
    return text + (f"; and {extra} more" if extra > 0 else "")


def _json_scalar(value: Any) -> str:
    """A scalar as JSON spells it (null, true, 1.5, 'text'), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _short(value)
    return repr(value)
