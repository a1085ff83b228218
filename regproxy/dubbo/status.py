"""Dubbo 2 response status codes: the fourth header byte of a response.

Importable from ``regproxy.dubbo.frame`` too. It is a module of its own because mypyc, which
compiles the data path (``regproxy.native``), cannot yet refer to the members of an ``IntEnum``
compiled in another module.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    OK = 20
    SERIALIZATION_ERROR = 25
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    CHANNEL_INACTIVE = 35
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED = 100
