# wsbridge as a container image: the single binary from `bun build
# --compile` on a small glibc base, run as a non-root user.
#
#   docker build -t wsbridge .
#   docker run --rm -p 8080:8080 -p 9090:9090 wsbridge --upstream ws://host.docker.internal:9000

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# The bun npm package carries the Bun binary for this platform.
RUN npm ci --no-audit --no-fund
COPY tsconfig.json bunfig.toml ./
COPY src ./src
RUN node_modules/.bin/bun build --compile --minify src/main.ts --outfile /out/wsbridge

# distroless/cc has glibc, which the Bun binary links against and which
# bun:ffi opens for TCP keepalive; the :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wsbridge /usr/local/bin/wsbridge
USER nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wsbridge", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"]
