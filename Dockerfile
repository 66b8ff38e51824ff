# peercache-server in a container: built in one stage, run in a slim one as an
# unprivileged user. Build and run:
#
#   docker build -t peercache-server .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/site:/srv/site:ro" \
#     peercache-server --root /srv/site --listen 0.0.0.0:8080 \
#     --admin-listen 0.0.0.0:9090
#
# Settings come from flags, PEERCACHE_* environment variables, or a TOML file
# mounted at /etc/peercache/server.toml (`--config`, see deploy/server.toml).
# Health check: GET /healthz on the site listener.

ARG RUST_VERSION=1.91
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The whole workspace (Cargo.lock pins every dependency); see .dockerignore.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p peercache-server --bin peercache-server \
 && install -D -m 0755 target/release/peercache-server /out/peercache-server

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 peercache \
 && useradd --system --uid 10001 --gid peercache --home-dir /var/lib/peercache \
      --shell /usr/sbin/nologin peercache \
 && install -d -o peercache -g peercache -m 0750 /var/lib/peercache /etc/peercache
COPY --from=build /out/peercache-server /usr/local/bin/peercache-server
USER 10001:10001
WORKDIR /var/lib/peercache
ENV PEERCACHE_LISTEN=0.0.0.0:8080 \
    PEERCACHE_ADMIN_LISTEN=127.0.0.1:9090 \
    PEERCACHE_KEY_FILE=/var/lib/peercache/record.key \
    PEERCACHE_UPSTREAM_CACHE=/var/lib/peercache/upstream
EXPOSE 8080
VOLUME ["/var/lib/peercache"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/peercache-server"]
