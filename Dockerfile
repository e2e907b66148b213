# kreq container image: kreqd (the worker daemon), kreq (the command line)
# and libkreq, on Debian 12, with librdkafka 2.12.1 built from source like
# the tests use (why not Debian's 2.0.2: scripts/librdkafka.sh).
#
#   docker build -t kreq:local .
#   docker run --rm kreq:local --help
#
# Stage 1 installs Debian packages and builds through the same scripts as
# CI's fresh-root stage, which runs these very steps on a brand-new minimal
# Debian 12 (scripts/freshroot.sh): setup.sh in its build profile, then
# librdkafka.sh and build-install.sh. Stage 2 holds the run-time libraries
# (setup.sh in its runtime profile), the built librdkafka and what was
# installed, and runs as an unprivileged user.
# docker-compose.yml uses this image for the kreqd replicas and the demo
# client; docs/operations.md explains configuration and keys.

FROM debian:bookworm AS build
WORKDIR /src
# librdkafka is built where the binaries' RPATH points and the runtime
# stage copies it from: /opt/kreq/librdkafka-<version>
ENV KREQ_KAFKA_CACHE=/opt/kreq
COPY scripts/setup.sh scripts/librdkafka.sh scripts/
COPY scripts/librdkafka/ scripts/librdkafka/
RUN scripts/setup.sh --build && rm -rf /var/lib/apt/lists/*
RUN scripts/librdkafka.sh
COPY . .
RUN scripts/build-install.sh /out

FROM debian:bookworm-slim AS runtime
COPY scripts/setup.sh /tmp/setup.sh
RUN /tmp/setup.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/setup.sh
COPY --from=build /opt/kreq/ /opt/kreq/
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
