# tapwire in a container. Build: podman build -t tapwire .   (or docker build)
# Run (see README, "In a container"):
#   podman run --rm -p 8086:8086 --cap-add NET_ADMIN --device /dev/net/tun \
#     --security-opt seccomp=dist/seccomp.json tapwire
# dist/seccomp.json is the runtime's default profile plus io_uring_setup, io_uring_enter and
# io_uring_register; without it the default profile answers io_uring_setup with ENOSYS and
# tapwire stops at start (`tapwire check` in the container says so).

# Build stage: the release binary.
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tapwire

# Runtime stage: Debian 12 slim, dnsmasq for DHCP and DNS (and its dhcp_release for the leases
# of removed networks), nft for host protection and NAT.
FROM docker.io/library/debian:12-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends dnsmasq-base dnsmasq-utils nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tapwire /usr/local/bin/tapwire
EXPOSE 8086
ENTRYPOINT ["/usr/local/bin/tapwire"]
# Listen on every address of the container's network namespace, so that a published port
# reaches it.
CMD ["run", "--listen", "0.0.0.0:8086"]
