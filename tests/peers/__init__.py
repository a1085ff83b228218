"""Protocol doubles for registries that no installable package provides (see ../shared/DESIGN.md).

Each double speaks the registry's published wire protocol so that the registry's official client
library talks to it unchanged; nothing here is imported by regproxy itself.
"""
