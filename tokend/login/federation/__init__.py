"""Workload identity (issue #25): a CI job's or a pod's platform JWT checked against a trust of
issuers.json, with the keys its issuer publishes (verify, issuer_keys, fetch)."""
