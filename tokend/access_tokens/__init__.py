"""Access tokens (#26): named, scoped, expiring, revocable credentials for people and robots.

This package is their pure core: the secret's form, a token's cap and its lifetime. It imports
no Twisted and no database, so the daemon, the tool and the store all build on it.
"""
