"""The request every benchmark client sends and the response the fast provider answers with.

Both are encoded once by regproxy's own encoders; senders patch only the 8-byte request id.  The
request is what a Dubbo 3 consumer sends for ``GreetingsService.sayHi("bench")`` (with the
``timeout`` attachment, which regproxy reads for its deadline), so the demo provider can answer it
too.
"""

from __future__ import annotations

import struct

from regproxy.dubbo.encode import encode_request, encode_response

SERVICE = "org.apache.dubbo.samples.api.GreetingsService"
METHOD = "sayHi"

ID = struct.Struct(">q")  # the request id sits at bytes 4..12 of the header


def request_template() -> tuple[bytes, bytes]:
    """(bytes before the id, bytes after it) of the benchmark request."""
    frame = encode_request(0, SERVICE, METHOD, ["bench"], attachments={"timeout": "3000"})
    return frame[:4], frame[12:]


def response_template() -> tuple[bytes, bytes]:
    """(bytes before the id, bytes after it) of the fast provider's answer."""
    frame = encode_response(0, "hi, bench")
    return frame[:4], frame[12:]
