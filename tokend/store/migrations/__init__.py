"""Alembic's script directory for the store: ``env.py`` and one module per schema version
under ``versions/``. A package, so it ships in the wheel and is found by import."""
