"""Protocol doubles for registries that no installable package provides (see ../shared/DESIGN.md),
and for Dubbo 3 applications that cannot run here (dubbo3.py: a provider application and a consumer).

Each registry double speaks the registry's published wire protocol so that the registry's official
client library talks to it unchanged; nothing here is imported by regproxy itself.
"""
