# Multi-stage build: compile with the system OpenSSL, ship a slim Debian with libssl3.
#   docker build -t tlspeek .
#   docker run --rm -p 3128:3128 -p 9748:9748 -v tlspeek-state:/var/lib/tlspeek \
#     -v ./admin-token:/etc/tlspeek/admin-token/token:ro tlspeek
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tlspeek \
 && ./target/release/tlspeek check-config --skip-files deploy/container.toml

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tlspeek \
 && useradd --system --uid 10001 --gid tlspeek --home-dir /var/lib/tlspeek --shell /usr/sbin/nologin tlspeek \
 && install -d -o tlspeek -g tlspeek -m 0750 /var/lib/tlspeek \
 && install -d -m 0755 /etc/tlspeek
COPY --from=build /src/target/release/tlspeek /usr/local/bin/tlspeek
COPY deploy/container.toml /etc/tlspeek/tlspeek.toml
USER 10001:10001
WORKDIR /var/lib/tlspeek
EXPOSE 3128 9748
VOLUME ["/var/lib/tlspeek"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tlspeek"]
CMD ["run", "--config", "/etc/tlspeek/tlspeek.toml", "--log-format", "json"]
