# Multi-stage build of the callbridge binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# The bridge runs as an unprivileged system user (no login shell; its home is its data dir): it
# owns only its data directory. The binary and the configuration stay root-owned, read-only.
RUN groupadd --system callbridge \
    && useradd --system --gid callbridge --home-dir /var/lib/callbridge --no-create-home \
        --shell /usr/sbin/nologin callbridge \
    && install -d -o callbridge -g callbridge -m 0750 /var/lib/callbridge
COPY --from=build /src/target/release/callbridge /usr/local/bin/callbridge
COPY configs /etc/callbridge
# Call records: records.sqlite_path is relative to here (mount a volume to keep them: a new
# named volume takes this directory's owner), or set CALLBRIDGE_DATABASE_URL=postgres://… to
# use PostgreSQL. Recordings (recording.dir) are written here too.
WORKDIR /var/lib/callbridge
USER callbridge:callbridge
# 8080 is above 1024: no privilege needed to bind it.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/callbridge"]
CMD ["serve", "--config", "/etc/callbridge/callbridge.toml"]
