"""Operators' own programs, as docker_auth runs them: the runner (no shell, bounded, killed at
its timeout) and the authorization program the issuing asks. The authentication program is an
authenticator on the door, :mod:`tokend.login.program`."""
