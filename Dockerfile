# tokend: registry token server. Mount your policy at /srv/tokend/config (users.json with your
# own hashes from `tokend hash-password`, and repositories.json): the image carries no accounts,
# and refuses to start without that directory. Mount the signing key at /srv/tokend/certs
# (RootCA.key, 0600, owned by uid 10001).

# Build a wheel in a throwaway stage: its build/ and *.egg-info never reach the image.
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokend/ tokend/
COPY twisted/ twisted/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/tokend
COPY --from=build /wheels /tmp/wheels
# Installing the wheel leaves nothing in the working directory; the plugin cache
# (twisted/plugins/dropin.cache) is written once here, as root, since uid 10001 cannot.
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "from twisted.plugin import IPlugin, getPlugins; from twisted import plugins; list(getPlugins(IPlugin, plugins))" \
    && groupadd --system --gid 10001 tokend \
    && useradd --system --uid 10001 --gid tokend --home-dir /srv/tokend --shell /usr/sbin/nologin tokend \
    && mkdir -p /srv/tokend/certs /srv/tokend/state /run/tokend \
    && chmod 0700 /srv/tokend/state \
    && chown tokend:tokend /srv/tokend/certs /srv/tokend/state /run/tokend

# The defaults --config-dir config, --key certs/RootCA.key and --cert certs/RootCA.crt resolve
# under the working directory (config/ is the operator's mount; the repository's example
# config/users.json never enters the image), and so does the access tokens' database,
# state/tokend.db, in a volume of its own that uid 10001 may write; only the socket moves to
# its own volume. (DL3064 mistakes the TOKEND_ prefix for a secret token.)
# hadolint ignore=DL3064
ENV TOKEND_LISTEN=unix:/run/tokend/tokend.sock:mode=660:lockfile=1

USER 10001:10001
VOLUME ["/run/tokend", "/srv/tokend/certs", "/srv/tokend/state"]
ENTRYPOINT ["twistd", "-n", "--pidfile=", "registry-token"]
