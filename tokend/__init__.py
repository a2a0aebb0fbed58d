"""tokend: a token authentication server for private Docker/OCI registries."""
