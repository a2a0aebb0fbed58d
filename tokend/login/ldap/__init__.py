"""Accounts in an LDAP directory: options, configuration, the client, entries, the
authenticator and its report."""
