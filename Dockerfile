# syntax=docker/dockerfile:1
# Images for both programs (not built on the development machines, which have no
# container runtime):
#   docker build --target stoa-api -t stoa-api:dev .
#   docker build --target stoa-operator -t stoa-operator:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stoa-api -p stoa-operator \
    && mkdir -p /out \
    && cp target/release/stoa-api target/release/stoa-operator /out/

# Distroless, non-root (uid 65532, as the operator's pod security context expects).
FROM gcr.io/distroless/cc-debian12:nonroot AS stoa-api
COPY --from=build /out/stoa-api /usr/local/bin/stoa-api
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/stoa-api"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS stoa-operator
COPY --from=build /out/stoa-operator /usr/local/bin/stoa-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/stoa-operator"]
CMD ["run"]
