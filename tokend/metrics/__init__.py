"""The daemon's Prometheus instruments and what they observe."""
