# kreq container image: kreqd (the worker daemon), kreq (the command line)
# and libkreq, on Debian 12 with Debian packages only.
#
#   docker build -t kreq:local .
#   docker run --rm kreq:local --help
#
# Stage 1 builds and installs kreq into /out; stage 2 holds the run-time
# libraries and what was installed, and runs as an unprivileged user.
# docker-compose.yml uses this image for the kreqd replicas and the demo
# client; docs/operations.md explains configuration and keys.

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      librdkafka-dev libprotobuf-c-dev protobuf-c-compiler uuid-dev libsodium-dev libssl-dev \
      libjansson-dev libmicrohttpd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DKREQ_BUILD_TESTS=OFF -DKREQ_BUILD_BENCH=OFF \
 && cmake --build /build \
 && DESTDIR=/out cmake --install /build --prefix /usr/local \
 && install -D -m 0644 /build/examples/hello_plugin.so \
      /out/usr/local/lib/kreq/plugins/hello_plugin.so

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librdkafka1 libprotobuf-c1 libuuid1 libsodium23 libssl3 libjansson4 libmicrohttpd12 \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/usr/local/ /usr/local/
COPY deploy/kreqd.conf /etc/kreq/kreqd.conf
RUN ldconfig \
 && groupadd --system --gid 10001 kreq \
 && useradd --system --uid 10001 --gid kreq --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kreq \
 && install -d -o kreq -g kreq -m 0700 /run/kreqd
USER kreq:kreq
EXPOSE 9464
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s \
  CMD curl -fsS http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["kreqd"]
CMD ["--config", "/etc/kreq/kreqd.conf"]
