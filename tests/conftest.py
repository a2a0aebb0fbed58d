"""Fixtures every test module may ask for by name.

``slapd`` (tests/ldap_server.py): a real OpenLDAP server loaded with the test directory. Listed
here, at the top of the suite, so pytest imports the module itself (and rewrites its asserts)
before any test module imports its helpers.
"""

pytest_plugins = ("ldap_server",)
