# Multi-stage build of the callbridge binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/callbridge /usr/local/bin/callbridge
COPY configs /etc/callbridge
# Call records: records.sqlite_path is relative to here (mount a volume to keep them), or
# set CALLBRIDGE_DATABASE_URL=postgres://… to use PostgreSQL.
WORKDIR /var/lib/callbridge
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/callbridge"]
CMD ["serve", "--config", "/etc/callbridge/callbridge.toml"]
