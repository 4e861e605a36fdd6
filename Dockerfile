# syntax=docker/dockerfile:1
#
# journeyd and the `journey` command in one image.
#
#   docker build -t journeyd .
#   docker run --rm -e JOURNEYD__KAFKA__BOOTSTRAP_SERVERS=kafka:9092 -p 9464:9464 journeyd
#
# The builder compiles RocksDB and librdkafka from source (the rocksdb and rdkafka crates), so
# the first build takes a while; the BuildKit cache mounts keep the cargo registry and the target
# directory between builds.

FROM rust:1-bookworm AS builder

# RocksDB: a C++ compiler, cmake and libclang (bindgen). librdkafka: make, and OpenSSL headers
# for the `ssl` feature (libssl-dev and pkg-config are in the rust image already; listed so the
# build does not depend on that).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make libclang-dev pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The `journey` command first (no RocksDB or librdkafka in it, so it builds quickly), and a check
# of the journeys the image ships: a bad file fails the build here, before the long build of the
# service, with the same FILE:LINE:COL messages as in CI.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p journeyd-cli \
 && target/release/journey validate journeys

# The binaries live in the cache mount, which is not part of the image: copy them out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p journeyd -p journeyd-cli \
 && install -D -m 0755 target/release/journeyd /out/journeyd \
 && install -D -m 0755 target/release/journey /out/journey


FROM debian:bookworm-slim

# ca-certificates for TLS to brokers and registries; libssl3 for librdkafka's `ssl` feature.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 journeyd \
 && useradd --system --uid 10001 --gid journeyd --home-dir /var/lib/journeyd \
      --no-create-home --shell /usr/sbin/nologin journeyd \
 && mkdir -p /var/lib/journeyd /etc/journeyd \
 && chown journeyd:journeyd /var/lib/journeyd

COPY --from=builder /out/journeyd /out/journey /usr/local/bin/
# The commented example configuration (every value is the default) and the example journeys.
# Mount your own journeys over /etc/journeyd/journeys (SIGHUP reloads them).
COPY deploy/journeyd.toml /etc/journeyd/journeyd.toml
COPY journeys/ /etc/journeyd/journeys/

# What differs from deploy/journeyd.toml in a container. Environment variables override the
# file; flags override both. The store is a sub-directory of the volume, so that a volume's own
# entries (lost+found) are not in the RocksDB directory. http.listen and admin.listen default
# to 127.0.0.1, which nothing outside the container can reach. The operator API refuses every
# call until tokens are given (JOURNEYD_ADMIN_TOKENS, or admin.tokens_file).
ENV JOURNEYD__JOURNEYS__DIR=/etc/journeyd/journeys \
    JOURNEYD__STORE__PATH=/var/lib/journeyd/store \
    JOURNEYD__HTTP__LISTEN=0.0.0.0:9464 \
    JOURNEYD__ADMIN__LISTEN=0.0.0.0:9465

USER journeyd
WORKDIR /var/lib/journeyd
VOLUME ["/var/lib/journeyd"]
# /metrics, /healthz, /readyz; the operator API (tokens needed)
EXPOSE 9464 9465
# No HEALTHCHECK: the image has no HTTP client. Kubernetes probes /healthz and /readyz itself,
# and docker-compose.yml has a check that needs only bash.
ENTRYPOINT ["journeyd"]
CMD ["run", "--config", "/etc/journeyd/journeyd.toml"]
