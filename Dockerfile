# syntax=docker/dockerfile:1
#
# One image for every stage and tool of the Si Twilio channel.
#
#   docker build -t si-twilio-channel:dev .
#
# The image has no ENTRYPOINT: every Kubernetes Deployment, Job and compose
# service names its binary in `command` (for example `si-ingress`).
# Topic definitions and Avro schemas are baked in for the topic/schema job:
#   /etc/si/topics.yaml   (SI_TOPICS_FILE)
#   /etc/si/schemas/      (SI_SCHEMAS_DIR)

ARG RUST_IMAGE=rust:1.88-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# The binaries shipped in the image: the one place that lists them. A name
# whose crate does not exist yet is skipped with a note (set
# SI_REQUIRE_ALL_BINARIES=true to make that an error instead).
ARG SI_BINARIES="si-ingress si-normalize si-consent si-segment si-voice-link si-lifecycle si-media si-egress sictl si-twilio-sandbox si-echo-responder"
ARG SI_REQUIRE_ALL_BINARIES=false

# ---------------------------------------------------------------------------
# skeleton: the workspace reduced to its manifests, with every Rust source
# replaced by a stub. It changes only when a Cargo.toml, Cargo.lock or the set
# of source files changes, so the dependency layer below stays cached while
# only our own code changes. (BuildKit keys `COPY --from` on content, not on
# modification times.)
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS skeleton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
RUN set -eu; \
    find . -type f -name '*.rs' | while IFS= read -r f; do \
        printf '//! Dependency-cache stub (see Dockerfile).\n#[allow(dead_code)]\nfn main() {}\n' > "$f"; \
    done; \
    find . -type f \
        ! -name Cargo.toml ! -name Cargo.lock ! -name '*.rs' \
        ! -name 'rust-toolchain' ! -name 'rust-toolchain.toml' \
        ! -path './.cargo/*' \
        -delete; \
    find . -type d -empty -delete

# ---------------------------------------------------------------------------
# builder: dependencies first (cached), then the workspace.
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
ARG SI_BINARIES
ARG SI_REQUIRE_ALL_BINARIES
# Debian stable's security updates move package versions; pinning them would
# break the build, the base image tag pins the release.
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends cmake libssl-dev pkg-config; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# Dependency layer: every stub compiles to nothing, so this builds (and caches)
# exactly the third-party crates of Cargo.lock, librdkafka included. It is an
# optimisation only: should a stub not compile (a lint denied at workspace
# level, say), the real build below still builds everything.
COPY --from=skeleton /src/ ./
RUN cargo fetch --locked \
 && { cargo build --release --locked --workspace \
      || echo "warning: stub build failed; dependencies are only partly cached"; }

# The real sources. Cargo decides freshness by modification time; the stubs
# above were written later than the checked-out sources may be, so touch every
# source file to make cargo rebuild our crates (dependencies stay cached).
COPY . .
RUN set -eu; \
    find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --workspace; \
    mkdir -p /out/bin /out/etc/si/schemas; \
    missing=""; \
    for bin in ${SI_BINARIES}; do \
        if [ -x "target/release/${bin}" ]; then \
            cp "target/release/${bin}" /out/bin/; \
        else \
            missing="${missing} ${bin}"; \
        fi; \
    done; \
    if [ -n "${missing}" ]; then \
        echo "note: not built (crate not in the workspace yet):${missing}"; \
        if [ "${SI_REQUIRE_ALL_BINARIES}" = "true" ]; then exit 1; fi; \
    fi; \
    test -f topics.yaml || { echo "topics.yaml is missing at the repo root" >&2; exit 1; }; \
    cp topics.yaml /out/etc/si/topics.yaml; \
    cp schemas/avro/*.avsc /out/etc/si/schemas/; \
    ls -l /out/bin /out/etc/si /out/etc/si/schemas

# ---------------------------------------------------------------------------
# runtime: Debian slim, CA certificates and OpenSSL only, non-root.
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates libssl3; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 si; \
    useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin si

COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /out/etc/si/ /etc/si/

ENV SI_TOPICS_FILE=/etc/si/topics.yaml \
    SI_SCHEMAS_DIR=/etc/si/schemas

LABEL org.opencontainers.image.title="si-twilio-channel" \
      org.opencontainers.image.description="Si's channel adapter for Twilio: every stage binary and sictl" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so Kubernetes can verify runAsNonRoot without an /etc/passwd lookup.
USER 10001:10001
WORKDIR /tmp

# Webhooks (si-ingress) and the admin endpoints (/metrics, /healthz, /readyz).
EXPOSE 8080 9090

# No ENTRYPOINT: each Deployment, Job and compose service sets its command.
# The base image's default (bash) is replaced by something harmless.
CMD ["sictl", "--help"]
