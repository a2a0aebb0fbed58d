"""The login throttle shared between workers and daemons: the news they exchange (and its wire
form), the keys, the Redis store, what it keeps in Redis (redis_scripts) and its address."""
