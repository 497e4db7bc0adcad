#!/usr/bin/env bash
# Build the image from the Dockerfile and check it against a local platform stand-in
# (scripts/container/scenario.py): healthy through its own HEALTHCHECK, a signed event delivered
# end to end, a read-only root with a tmpfs /tmp and a state volume, SIGTERM during a held upload
# re-queues the job and a second container on the same volume completes it, non-root.
#
# Usage: scripts/container-test.sh        (Debian; as root or with sudo)
#
# What it needs, it sets up and takes down again:
# - docker.io (and mmdebstrap, for a base) from Debian's packages when missing;
# - a Docker engine: when none answers it starts `dockerd --bridge=none --iptables=false` (state in
#   the default data-root, so builds are cached between runs) and stops it, by PID, at exit;
# - the base image (ARG BASE in the Dockerfile, or $BASE): pulled, or, where no registry answers,
#   bootstrapped from Debian's packages with the same Python and tagged with the base's name;
# - pip in the build uses the index and CA bundle this machine's pip is configured with.
# Every container runs on the host network (everything listens on 127.0.0.1), never a bridge.
# Prints the image's size over its base and the timings; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_MB_OVER_BASE=120
IMAGE=fulfiller:container-test
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fulfiller-ct.XXXXXX")
# This run's containers and volumes carry this label; its images carry the key alone.
LABEL_KEY=fulfiller.container-test
LABEL="$LABEL_KEY=${WORK##*.}"
DOCKERD_PID=""
cleanup() {
  local status=$?
  if [ -n "${DOCKER:-}" ] && "$DOCKER" info >/dev/null 2>&1; then
    # What the scenario left behind if it was interrupted: its containers and volumes carry the label.
    "$DOCKER" ps -aq --filter "label=$LABEL" | xargs -r "$DOCKER" rm -f -v >/dev/null 2>&1 || true
    "$DOCKER" volume ls -q --filter "label=$LABEL" | xargs -r "$DOCKER" volume rm -f >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    echo "stopping the dockerd this script started (pid $DOCKERD_PID)"
    "${SUDO[@]}" kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do "${SUDO[@]}" kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    if "${SUDO[@]}" kill -0 "$DOCKERD_PID" 2>/dev/null; then
      echo "dockerd (pid $DOCKERD_PID) did not stop in 30 s; killing it"
      "${SUDO[@]}" kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    fi
  fi
  # dockerd leaves its network namespace mounted in its exec-root.
  awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r "${SUDO[@]}" umount -l || true
  rm -rf "$WORK" || echo "could not remove $WORK" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

apt_install() {
  echo "installing from Debian: $*"
  { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq \
    && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@"
  } >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; echo "apt-get install $* failed" >&2; exit 1; }
}

# A docker CLI that builds with BuildKit: one with buildx, or an engine-era CLI (before 23) with
# BuildKit built in (Debian's docker.io).
buildkit_cli() {
  local cli
  for cli in "$(command -v docker || true)" /usr/bin/docker; do
    [ -x "$cli" ] || continue
    if "$cli" buildx version >/dev/null 2>&1; then echo "$cli"; return; fi
    case "$("$cli" --version 2>/dev/null)" in
      "Docker version "1[89].*|"Docker version "2[012].*) echo "$cli"; return ;;
    esac
  done
}

# --- the engine ---------------------------------------------------------------------------------
DOCKER=$(buildkit_cli)
if ! command -v dockerd >/dev/null 2>&1 || [ -z "$DOCKER" ]; then
  apt_install docker.io
  DOCKER=$(buildkit_cli)
fi
[ -n "$DOCKER" ] || { echo "no docker CLI that can build with BuildKit (docker.io or buildx)" >&2; exit 1; }
export DOCKER_BUILDKIT=1

if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "no Docker engine answers: starting dockerd (host network only, no bridge, no iptables)"
  export DOCKER_HOST=unix:///var/run/docker.sock
  "${SUDO[@]}" dockerd --bridge=none --iptables=false --host "$DOCKER_HOST" \
    --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 600); do
    "$DOCKER" info >/dev/null 2>&1 && break
    "${SUDO[@]}" kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; DOCKERD_PID=""; exit 1; }
    sleep 0.1
  done
  "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not answer within 60 s" >&2; tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi

# --- the base image -----------------------------------------------------------------------------
BASE=${BASE:-$(sed -n 's/^ARG BASE=//p' Dockerfile | head -1)}
[ -n "$BASE" ] || { echo "the Dockerfile names no ARG BASE=..." >&2; exit 1; }
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1 && ! timeout 300 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
  # No registry answers: the same Debian release and Python, from Debian's packages.
  tag=${BASE#*:}
  suite=$(grep -oE 'bookworm|trixie|bullseye' <<<"$tag" | head -1 || true)
  want_python=$(grep -oE '^3\.[0-9]+' <<<"$tag" || true)
  if [ -z "$suite" ] || [ -z "$want_python" ]; then
    echo "cannot pull $BASE, and cannot tell which Debian release and Python to bootstrap it from" >&2
    exit 1
  fi
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  echo "cannot pull $BASE: bootstrapping it from Debian $suite (python3, python3-venv, ca-certificates)"
  start=$(now)
  # Into a file first: a bootstrap that fails half-way must not leave a broken image under the base's name.
  "${SUDO[@]}" mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$WORK/base.tar"
  "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.description=\"bootstrapped from Debian $suite for $BASE\"" \
    "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
  got_python=$("$DOCKER" run --rm --network host "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$got_python" != "$want_python" ]; then
    "$DOCKER" rmi "$BASE" >/dev/null
    echo "Debian $suite has Python $got_python, but $BASE means Python $want_python" >&2
    exit 1
  fi
  echo "bootstrapped $BASE (Python $got_python) in $(since "$start") s"
fi

# --- the build ----------------------------------------------------------------------------------
[ -x .venv/bin/python ] || scripts/install.sh --test
# The index and CA bundle this machine's pip uses (environment over config files). Local paths
# (file:// indexes, find-links) do not exist inside the build and are left out.
pip_setting() {
  local listing key value
  listing=$(.venv/bin/python -m pip config list 2>/dev/null || true)
  for key in ":env:.$1" "install.$1" "global.$1"; do
    value=$(awk -v k="$key=" 'index($0, k) == 1 { v = substr($0, length(k) + 1) } END { print v }' <<<"$listing")
    if [ -n "$value" ]; then value=${value#\'}; echo "${value%\'}"; return; fi
  done
}
web_urls() { tr ' ' '\n' <<<"$1" | grep -E '^https?://' | paste -sd ' ' || true; }
build_args=(--network host --build-arg "BASE=$BASE" --label "$LABEL_KEY" -t "$IMAGE")
index=$(web_urls "$(pip_setting index-url)")
extra=$(web_urls "$(pip_setting extra-index-url)")
cert=$(pip_setting cert)
[ -z "$index" ] || build_args+=(--build-arg "PIP_INDEX_URL=$index")
[ -z "$extra" ] || build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
[ -z "$cert" ] || build_args+=(--secret "id=pip_cert,src=$cert")
echo "building $IMAGE on $BASE (index: ${index:-the default}; CA bundle: ${cert:-certifi})"
start=$(now)
"$DOCKER" build --progress plain "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; echo "docker build failed" >&2; exit 1; }
build_s=$(since "$start")
# Earlier builds of this script's tag, now untagged.
"$DOCKER" image prune -f --filter "label=$LABEL_KEY" >/dev/null

base_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$BASE")
image_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
over_mb=$(( (image_bytes - base_bytes) / 1000000 ))

# --- the checks ---------------------------------------------------------------------------------
status=0
.venv/bin/python scripts/container/scenario.py --image "$IMAGE" --label "$LABEL" --docker "$DOCKER" || status=1
echo "timing build ${build_s}"
echo "image $IMAGE: ${over_mb} MB over its base $BASE (at most $MAX_MB_OVER_BASE MB)"
if [ "$over_mb" -gt "$MAX_MB_OVER_BASE" ]; then
  echo "FAILED: the image is ${over_mb} MB over its base, more than $MAX_MB_OVER_BASE MB" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "container test passed" || echo "container test FAILED" >&2
exit "$status"
