"""Dubbo 3's Triple protocol (gRPC over HTTP/2): sans-IO building blocks.

Nothing here does I/O or speaks HTTP/2 frames (the ``h2`` library will): these modules read the
first bytes of a connection (``detect``), the ``grpc-timeout`` header (``timeout``), gRPC statuses
and their mapping to Dubbo's (``status``), the length-prefixed messages of a stream's DATA
(``messages``) and a call's routing facts from its request headers (``call``). The facts come
from apache/dubbo 3.3 and the gRPC HTTP/2 protocol (grpc/grpc doc/PROTOCOL-HTTP2.md); each module
names its sources.
"""
