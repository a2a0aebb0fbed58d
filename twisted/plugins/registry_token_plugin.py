"""Registers ``twistd registry-token``; tokend.tap is imported only when it is chosen."""

from twisted.application.service import ServiceMaker

registry_token = ServiceMaker(
    "tokend registry token server",
    "tokend.tap",
    "Token authentication server for private Docker/OCI registries",
    "registry-token",
)
