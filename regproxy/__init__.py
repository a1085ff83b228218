"""regproxy: a Dubbo registry-proxy sidecar."""

from regproxy import native

# Before any data-path module is imported: a compiled module older than its source must not run.
native.install()
