# syntax=docker/dockerfile:1
# ml-service, CPU image. Multi-stage: cargo-chef builds the dependencies in
# their own cached layer (they change far less often than the code), the
# release binary is built on top, and the runtime image is Debian slim with
# the one binary, run as a non-root user.
#
#   docker build -t ml-service .
#   docker run -p 8000:8000 -p 8001:8001 -e ML_SERVICE_API_KEY=... -v $PWD/models:/models ml-service
#
# Everything the binary needs is compiled in (the catalogue, the migrations,
# the gRPC descriptors); models are mounted at /models (MODEL_STORAGE=local)
# or read from S3 (MODEL_STORAGE=s3, S3_BUCKET, ...). Without models the first
# start trains them from the app data (DATABASE_URL, else a demo SQLite file
# under /data).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies only: this layer is reused until Cargo.lock changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin ml-service
COPY . .
RUN cargo build --release --locked --bin ml-service \
    && strip target/release/ml-service

FROM debian:bookworm-slim AS runtime
# CA certificates for S3 and a TLS Postgres; nothing else is needed (the
# binary links only glibc and libgcc).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/ml-service --create-home ml-service \
    && mkdir -p /models /data \
    && chown ml-service:ml-service /models /data
COPY --from=builder /src/target/release/ml-service /usr/local/bin/ml-service
USER 10001:10001
WORKDIR /var/lib/ml-service
# Listen on every interface inside the container. Without ML_SERVICE_API_KEY
# the service refuses a non-loopback address unless
# ML_SERVICE_INSECURE_NO_AUTH=true (only behind an authenticating gateway).
ENV ML_SERVICE_HOST=0.0.0.0 \
    ML_SERVICE_PORT=8000 \
    GRPC_PORT=8001 \
    PROMETHEUS_PORT=9090 \
    MODEL_PATH=/models \
    SQLITE_PATH=/data/ml-service.db \
    LOG_LEVEL=info
EXPOSE 8000 8001 9090
VOLUME ["/models", "/data"]
# Ready = every model loaded and not shutting down; the binary asks itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["ml-service", "healthcheck"]
# SIGTERM starts the graceful shutdown (readiness false, grace, drain).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ml-service"]
CMD ["serve"]
