#!/usr/bin/env bash
# `make images`: build cdcflow's images and print their sizes and build times.
# Uses the user's own engine when there is one (DOCKER_HOST set, or a docker socket, or
# podman); otherwise starts the private engine (`make engine`) and builds FROM the local
# Debian base it made. IMAGES picks a subset (default: all); TAG names the tag (0.1.0);
# IMAGE_BASE overrides the Python base, RABBITMQ_BASE the Debian one.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/../.."

images="${IMAGES:-workers flink operator nx27017 rabbitmq}"
tag="${TAG:-$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -1)}"
docker=(docker)
private=0
if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$ENGINE_HOST" ] || [ -S /var/run/docker.sock ]; then
  say "building with your engine (${DOCKER_HOST:-/var/run/docker.sock})"
elif [ -z "${DOCKER_HOST:-}" ] && ! [ -S /var/run/docker.sock ] && command -v podman >/dev/null; then
  docker=(podman)
  say "building with podman"
else
  "$(dirname "$0")/up.sh" >/dev/null
  export DOCKER_HOST="$ENGINE_HOST"
  private=1
  # Debian's 20.10 client matches the private daemon and has BuildKit built in (a newer
  # client on PATH may want the buildx plugin for it).
  [ -x /usr/bin/docker ] && docker=(/usr/bin/docker)
fi
export DOCKER_BUILDKIT=1

build_args=(--build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
            --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
python_base="${IMAGE_BASE:-}"
debian_base="${RABBITMQ_BASE:-}"
if [ "$private" -eq 1 ]; then
  python_base="${python_base:-$BASE_IMAGE}"
  debian_base="${debian_base:-$BASE_IMAGE}"
fi
secret=()
# A TLS-intercepting proxy's CA bundle enters the build as a secret only (never a layer).
ca="${CDCFLOW_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$ca" ] && secret=(--secret "id=cacert,src=$ca")

summary=()
for name in $images; do
  # flink: the workers image's `flink` target (the same layers plus Java and the jars).
  dockerfile="images/$name.Dockerfile"
  target=()
  case $name in
    workers) target=(--target workers) ;;
    flink) dockerfile=images/workers.Dockerfile; target=(--target flink) ;;
  esac
  [ -f "$dockerfile" ] || die "no $dockerfile (IMAGES=$images)"
  base_arg=()
  if [ "$name" = rabbitmq ]; then
    [ -n "$debian_base" ] && base_arg=(--build-arg "BASE=$debian_base")
  else
    [ -n "$python_base" ] && base_arg=(--build-arg "BASE=$python_base")
  fi
  ref="cdcflow/$name:$tag"
  say "building $ref"
  start=$(date +%s)
  log="$(mktemp)"
  if ! nice "${docker[@]}" build --network host "${build_args[@]}" "${base_arg[@]}" "${secret[@]}" \
      "${target[@]}" -f "$dockerfile" -t "$ref" . >"$log" 2>&1; then
    tail -30 "$log" >&2
    rm -f "$log"
    die "building $ref failed (last lines above)"
  fi
  rm -f "$log"
  secs=$(( $(date +%s) - start ))
  size=$("${docker[@]}" image inspect --format '{{.Size}}' "$ref")
  summary+=("$(printf '%-28s %6d MB %5d s' "$ref" $(( size / 1000000 )) "$secs")")
done
# Earlier builds of these images, now untagged, would pile up in the data root.
"${docker[@]}" image prune -f --filter "label=org.opencontainers.image.source=https://github.com/cdcflow/cdcflow" >/dev/null || true
printf '%-28s %9s %7s\n' image size build
printf '%s\n' "${summary[@]}"
