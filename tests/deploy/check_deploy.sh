#!/usr/bin/env bash
# check_deploy.sh SOURCE_DIR [KREQD] — the deployment files are valid:
#   - docker-compose.yml passes `docker-compose config -q` (always checked:
#     without docker-compose this test FAILS; scripts/setup.sh installs it);
#   - the Dockerfile builds only from Debian images, installs and builds
#     through the scripts CI's fresh-root stage proves on a new Debian 12
#     (setup.sh --build / --runtime, librdkafka.sh, build-install.sh; so the
#     image carries the librdkafka the tests use, not Debian's), and
#     downloads nothing by itself (no package manager but those scripts');
#   - deploy/kreqd.service passes `systemd-analyze verify` where
#     systemd-analyze exists (its ExecStart pointed at KREQD, the kreqd just
#     built, since the installed path need not exist here).
set -euo pipefail
src=$1
kreqd=${2:-}
fail() {
  echo "check_deploy: $*" >&2
  exit 1
}

# ---- docker-compose.yml --------------------------------------------------
command -v docker-compose >/dev/null ||
  fail "docker-compose is not installed (scripts/setup.sh installs it): cannot check docker-compose.yml"
# docker-compose resolves the secret's relative path but does not need the
# file; the variables have defaults, set them anyway as the docs say
KREQ_UID=$(id -u) KREQ_GID=$(id -g) docker-compose --project-directory "$src" \
  -f "$src/docker-compose.yml" config -q ||
  fail "docker-compose.yml is invalid (docker-compose config -q)"
compose=$(KREQ_UID=1000 KREQ_GID=1000 docker-compose --project-directory "$src" \
  -f "$src/docker-compose.yml" config)
for want in "client.id=kreqd-1" "client.id=kreqd-2" "kreqd.state.dir=/tmp" "/healthz" "demo_key" \
  "condition: service_completed_successfully" "image: apache/kafka"; do
  grep -qF -- "$want" <<<"$compose" || fail "docker-compose.yml lacks $want"
done
# the optional 3-broker profile: valid, complete, and replicated
KREQ_UID=$(id -u) KREQ_GID=$(id -g) docker-compose --project-directory "$src" \
  -f "$src/docker-compose.yml" --profile cluster3 config -q ||
  fail "docker-compose.yml is invalid with --profile cluster3 (docker-compose config -q)"
compose3=$(KREQ_UID=1000 KREQ_GID=1000 docker-compose --project-directory "$src" \
  -f "$src/docker-compose.yml" --profile cluster3 config)
for want in "kafka-c1:" "kafka-c2:" "kafka-c3:" "1@kafka-c1:9093,2@kafka-c2:9093,3@kafka-c3:9093" \
  "--replication-factor 3" "min.insync.replicas=2" "client.id=kreqd-c3a" "client.id=kreqd-c3b" \
  "kafka.bootstrap.servers=kafka-c1:9092,kafka-c2:9092,kafka-c3:9092" "- cluster3" \
  "kreqd.state.dir=/tmp"; do
  grep -qF -- "$want" <<<"$compose3" || fail "docker-compose.yml --profile cluster3 lacks $want"
done
echo "check_deploy: docker-compose.yml is valid (also with --profile cluster3)"

# ---- Dockerfile -----------------------------------------------------------
dockerfile="$src/Dockerfile"
[ -f "$dockerfile" ] || fail "no Dockerfile"
stages=()
while read -r _ image rest; do
  read -r -a words <<<"$rest"
  if [[ ! "$image" =~ ^debian:[a-z0-9.-]+$ ]] && [[ ! " ${stages[*]} " == *" $image "* ]]; then
    fail "Dockerfile: FROM $image is not a Debian image (debian:...)"
  fi
  if [ "${#words[@]}" -ge 2 ] && [ "${words[0],,}" = "as" ]; then
    stages+=("${words[1]}")
  fi
done < <(grep -iE '^[[:space:]]*FROM[[:space:]]' "$dockerfile")
[ "${#stages[@]}" -ge 2 ] || fail "Dockerfile: expected a multi-stage build (FROM ... AS name, twice)"
if grep -nE '\b(pip3?|npm|yarn|gem|cargo|go (get|install)|apk|yum|dnf|snap|wget)\b|curl[^\n]*\|[[:space:]]*(ba)?sh|^[[:space:]]*ADD[[:space:]]+https?:' \
  "$dockerfile" | grep -v '^[0-9]*:[[:space:]]*#' | grep -v 'HEALTHCHECK\|CMD curl'; then
  fail "Dockerfile: installs or downloads something other than Debian packages (lines above)"
fi
for want in "scripts/setup.sh --build" "setup.sh --runtime" "RUN scripts/librdkafka.sh" \
  "RUN scripts/build-install.sh" "ENV KREQ_KAFKA_CACHE=/opt/kreq" "COPY --from=build /opt/kreq/ /opt/kreq/"; do
  grep -v '^[[:space:]]*#' "$dockerfile" | grep -qF -- "$want" ||
    fail "Dockerfile: lacks '$want' (the steps scripts/freshroot.sh proves)"
done
if grep -nE '^[^#]*(apt-get|librdkafka-dev|librdkafka1)' "$dockerfile"; then
  fail "Dockerfile: installs packages itself (lines above) instead of through scripts/setup.sh"
fi
grep -qE '^[[:space:]]*USER[[:space:]]+[^r0]' "$dockerfile" || fail "Dockerfile: runtime stage does not switch to a non-root USER"
echo "check_deploy: Dockerfile uses Debian images and installs through scripts/setup.sh"

# ---- systemd unit ---------------------------------------------------------
unit="$src/deploy/kreqd.service"
[ -f "$unit" ] || fail "no deploy/kreqd.service"
for want in DynamicUser= NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
  PrivateDevices=yes "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" "CapabilityBoundingSet=" \
  SystemCallFilter=@system-service LoadCredential= Restart=on-failure "ExecReload=/bin/kill -HUP"; do
  grep -qF -- "$want" "$unit" || fail "deploy/kreqd.service lacks $want"
done
if command -v systemd-analyze >/dev/null; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  exe=${kreqd:-/bin/true}
  sed "s|^ExecStart=/usr/local/bin/kreqd|ExecStart=$exe|" "$unit" >"$work/kreqd.service"
  if ! systemd-analyze verify "$work/kreqd.service" >"$work/verify.out" 2>&1; then
    cat "$work/verify.out" >&2
    fail "systemd-analyze verify deploy/kreqd.service failed"
  fi
  # verify exits 0 on some problems it only prints: treat those as failures
  if grep -v "^$" "$work/verify.out" | grep -q .; then
    cat "$work/verify.out" >&2
    fail "systemd-analyze verify deploy/kreqd.service reported problems"
  fi
  echo "check_deploy: deploy/kreqd.service verified by systemd-analyze"
else
  echo "check_deploy: systemd-analyze not found: deploy/kreqd.service was NOT verified"
fi
echo "check_deploy: OK"
