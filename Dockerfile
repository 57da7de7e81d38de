# syntax=docker/dockerfile:1.7
# Images for both programs: `make images` (see the Makefile for the tags, labels and the
# reproducible-build settings it passes). By hand:
#   docker build --target stoa-api -t stoa-api:dev .
#   docker build --target stoa-operator -t stoa-operator:dev .
# Base images are arguments so a release can pin them by digest
# (--build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:…).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Reproducible output: no paths of this machine in the binaries, no incremental state.
ENV CARGO_INCREMENTAL=0 \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"

# 1. Dependencies only: this layer is rebuilt when a manifest or Cargo.lock changes, not
#    when the code does. Each workspace crate gets an empty stand-in for its sources.
COPY Cargo.toml Cargo.lock ./
COPY api-server/Cargo.toml api-server/Cargo.toml
COPY api-server/contract/Cargo.toml api-server/contract/Cargo.toml
COPY operator/Cargo.toml operator/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    for crate in api-server api-server/contract operator tests; do \
      mkdir -p "$crate/src/bin" && touch "$crate/src/lib.rs" \
      && echo 'fn main() {}' > "$crate/src/main.rs"; \
    done \
    && echo 'fn main() {}' > tests/src/bin/stoa-load.rs \
    && cargo build --release --locked -p stoa-api \
    && cargo build --release --locked -p stoa-operator \
    && rm -rf api-server/src api-server/contract/src operator/src tests/src \
    && cargo clean --release -p stoa-api -p stoa-operator -p stoa-contract

# 2. The code. Timestamps from the commit (SOURCE_DATE_EPOCH, passed by `make images`),
#    declared only here: an ARG enters the cache key of every later step and each commit
#    has its own, so declared before step 1 it rebuilt every dependency on every commit.
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
COPY . .
#    Each program on its own, as `cargo build --release -p stoa-api` builds it locally: built
#    together, their shared dependencies get the union of both feature sets, so stoa-api
#    would be another binary, whose function names api-server/startup-order.txt (the
#    start-up code's link order) does not match.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked -p stoa-api \
    && cargo build --release --locked -p stoa-operator \
    && mkdir -p /out \
    && cp target/release/stoa-api target/release/stoa-operator /out/

# Distroless, non-root (uid 65532, as the operator's pod security context expects), with
# the labels both images share.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.source="https://github.com/stoa-dev/stoa" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532

FROM runtime AS stoa-api
LABEL org.opencontainers.image.title="stoa-api" \
      org.opencontainers.image.description="The Stoa REST API (RealWorld) over PostgreSQL and Redis"
COPY --from=build /out/stoa-api /usr/local/bin/stoa-api
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/stoa-api"]
CMD ["serve"]

FROM runtime AS stoa-operator
LABEL org.opencontainers.image.title="stoa-operator" \
      org.opencontainers.image.description="The Kubernetes operator for Stoa resources"
COPY --from=build /out/stoa-operator /usr/local/bin/stoa-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/stoa-operator"]
CMD ["run"]
