"""The database of access tokens (#26): where it is (:mod:`.database`), its tables
(:mod:`.schema`) and their versions (:mod:`.migrating`, Alembic), the queries (:mod:`.queries`)
and the one way they leave the reactor thread (:mod:`.runner`)."""
