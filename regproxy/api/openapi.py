"""The OpenAPI 3.1 document served at GET /openapi.json, generated from the pydantic models.

Generated rather than written by hand so the document cannot drift from what the API accepts.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from regproxy.api.models import (
    ERR_NO_DOC,
    ErrorReply,
    OkReply,
    PubReply,
    PubRequest,
    RegistryRef,
    SubReply,
    SubRequest,
)

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"


def _version() -> str:
    try:
        return importlib.metadata.version("regproxy")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(ErrorReply)}


def _operation(
    op_id: str,
    summary: str,
    description: str,
    request: type[BaseModel],
    reply: type[BaseModel],
    max_body: int,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "success (err_no 0)", "content": _json_content(reply)},
        "400": _error(
            "not JSON, a missing, illegal or unknown field, or a registry this sidecar is not "
            "configured with (unless api_allow_body_registries); err_msg names the field (err_no 1)"
        ),
    }
    if op_id in ("unpublish", "unsubscribe"):
        responses["404"] = _error("not published / not subscribed by this sidecar (err_no 2)")
    responses.update(
        {
            "405": _error("wrong HTTP method (err_no 7)"),
            "413": _error(f"body over {max_body} bytes (err_no 6)"),
            "500": _error("unexpected error inside regproxy (err_no 5)"),
            "502": _error("the registry refused or failed the operation (err_no 4)"),
            "503": _error(
                "the registry is not connected right now (err_no 3); or the change is in effect but "
                "could not be saved to the data directory, so a restart would lose it until a save "
                "succeeds, which regproxy retries (err_no 10)"
            ),
        }
    )
    return {
        "post": {
            "operationId": op_id,
            "summary": summary,
            "description": description,
            "requestBody": {
                "required": True,
                "description": "JSON; any Content-Type is accepted. Unknown keys are refused (400 "
                "naming the key), so a misspelt field never falls back to a default.",
                "content": _json_content(request),
            },
            "responses": responses,
        }
    }


def build_openapi(*, max_body: int = 64 * 1024) -> dict[str, Any]:
    # RegistryRef by name: the requests refer to it from a hand-written schema (see OptionalRegistry).
    requests = (PubRequest, SubRequest, RegistryRef)
    models: list[type[BaseModel]] = [*requests, PubReply, SubReply, OkReply, ErrorReply]
    _, top = models_json_schema(
        [(m, "validation" if m in requests else "serialization") for m in models],
        ref_template=_REF,
    )
    schemas = top.get("$defs", {})
    codes = "\n".join(f"* `{int(code)}` {code.name}: {doc}" for code, doc in ERR_NO_DOC.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "regproxy pub/sub API",
            "version": _version(),
            "description": (
                "Applications publish and subscribe Dubbo services through their local regproxy "
                "instead of talking to the registry. Every reply is JSON with `err_no` and `err_msg`; "
                "the HTTP status matches. A 200 means the change is in effect and saved in the "
                "data directory, so a restarted sidecar has it.\n\n`err_no` codes:\n" + codes
            ),
        },
        "paths": {
            "/pub": _operation(
                "publish",
                "Publish a service",
                "Registers the provider URL with regproxy's advertise IP and ingress port and "
                "forwards ingress traffic for it to `service.port`, or to regproxy's `app_port` "
                "(`--app-port`) when the body has none; the reply's `app_port` says which. Idempotent.",
                PubRequest,
                PubReply,
                max_body,
            ),
            "/unpub": _operation(
                "unpublish",
                "Unpublish a service",
                "Removes the registration made by /pub (same body).",
                PubRequest,
                OkReply,
                max_body,
            ),
            "/sub": _operation(
                "subscribe",
                "Subscribe to a service",
                "Watches the providers of the service key and routes egress calls for it to them. "
                "`methods` is accepted and ignored.",
                SubRequest,
                SubReply,
                max_body,
            ),
            "/unsub": _operation(
                "unsubscribe",
                "Unsubscribe",
                "Stops watching; routes and cluster go once nobody subscribes to the key.",
                SubRequest,
                OkReply,
                max_body,
            ),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}},
                }
            },
        },
        "components": {"schemas": schemas},
    }
