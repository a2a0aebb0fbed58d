"""The login throttle shared between workers and daemons: the news they exchange,
the keys, the Redis store and its address."""
