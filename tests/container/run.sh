#!/usr/bin/env bash
# The Docker image, built and run with podman: a Debian bookworm base made here with debootstrap from the
# Debian mirror this machine's apt sources name (the usual registries may be out of reach; it is kept in
# podman's image store for the next run), the project's Dockerfile built on it without models, then the image
# run on loopback with the real BlazeFace network mounted as its model cache, and checked: /health, a hash,
# an exif and a face_detection job against hashlib, exiftool and MediaPipe on the host, every process the
# non-root user, nothing writable but the volume (and temporary folders), a running job requeued by SIGTERM
# within the stop timeout, ffmpeg and exiftool inside; and deploy/cl-ml-tools.service verified against the
# image's install. Run by .ci/run after the SLURM test (`make test` made .venv). Needs root: apt-get,
# debootstrap, podman.
#   [VENV=.venv] [KEEP=1 (keep the temporary directory)] [REBUILD_BASE=1] tests/container/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
BASE_IMAGE=localhost/cl-ml-tools-test-base:bookworm
IMAGE=localhost/cl-ml-tools:test
STOP_TIMEOUT=30
start=$SECONDS
say() { echo "container test: $*" >&2; }
took() { say "$1 ($((SECONDS - $2)) s)"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "no virtual environment at $VENV; run 'make test' (or tools/bootstrap.sh dev) first"
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  say "debootstrap and podman (with runc, which works where crun does not) need root; run this script as root"
  exit 1
fi
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
need=()
for package in podman runc debootstrap buildah; do command -v "$package" >/dev/null || need+=("$package"); done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} with apt-get"
  t=$SECONDS
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  took "installed" "$t"
fi

# Where these machines allow it: runc (crun fails on their hybrid cgroups), the host's network (no bridge
# set-up), and limits at or below the host's (raising one inside a container is refused).
podman() { command podman --runtime runc "$@"; }
LIMITS=(--network=host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cl_ml_tools-container.XXXXXX")
NAME=cl-ml-tools-test-$$
VOLUME=$NAME
image_mount=
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if [ "$rc" -ne 0 ] && podman container exists "$NAME"; then
    say "FAILED ($rc); the container's log follows"
    podman logs --tail 60 "$NAME" >&2
  fi
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1
  podman volume rm -f "$VOLUME" >/dev/null 2>&1
  [ -n "$image_mount" ] && podman image unmount "$IMAGE" >/dev/null
  if [ -n "${KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${REBUILD_BASE:-}" ] || ! podman image exists "$BASE_IMAGE"; then
  t=$SECONDS
  mirror=$(apt-cache policy | awk '$3 == "bookworm/main" {print $2; exit}')
  if [ -z "$mirror" ]; then
    say "no bookworm/main source in this machine's apt sources (apt-cache policy); cannot build the base"
    exit 1
  fi
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -f "$WORK"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$WORK/rootfs" -c . | podman import -q - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
  took "base $BASE_IMAGE made with debootstrap from $mirror" "$t"
else
  say "base $BASE_IMAGE from an earlier run (REBUILD_BASE=1 makes it again)"
fi

# The host's package index settings (index URLs, CA bundle) go in as build secrets, never into a layer.
mapfile -t secrets < <("$VENV/bin/python" tests/container/check.py pip-settings "$WORK")
t=$SECONDS
# --format docker keeps the HEALTHCHECK (the OCI format has none).
if ! podman build --format docker "${LIMITS[@]}" "${secrets[@]}" --build-arg BASE="$BASE_IMAGE" \
  --build-arg MODELS=none -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  exit 1
fi
took "image $IMAGE built" "$t"

# The model cache mounted read-only: the real BlazeFace network, nothing else (the image holds no models).
mkdir -m 755 "$WORK/models"
"$VENV/bin/python" tests/container/check.py models "$WORK/models"
chmod -R a+rX "$WORK/models"
# A video long enough to be still converting when the container is stopped.
ffmpeg -v error -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 -t 20 \
  -c:v libx264 -preset ultrafast -c:a aac -shortest "$WORK/long.mp4"

KEY=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
podman volume create "$VOLUME" >/dev/null
t=$SECONDS
# --read-only with no tmpfs of podman's own: the volume is the one place the service can write to. Loopback
# only (the image's config listens on every interface, for a published port).
podman run -d --name "$NAME" "${LIMITS[@]}" --no-healthcheck --read-only --read-only-tmpfs=false \
  -e CL_ML_TOOLS_API_KEY="$KEY" -v "$VOLUME:/var/lib/cl_ml_tools" -v "$WORK/models:/opt/cl_ml_tools/models:ro" \
  "$IMAGE" cl-ml-tools serve --config /etc/cl_ml_tools/config.yaml --host 127.0.0.1 --port "$PORT" >/dev/null
"$VENV/bin/python" tests/container/check.py health "$URL"
took "serving on $URL" "$t"

podman exec "$NAME" ffmpeg -hide_banner -version | head -n 1 | sed 's/^/container test: inside: /' >&2
podman exec "$NAME" exiftool -ver | sed 's/^/container test: inside: exiftool /' >&2

# What the service user can write to. In the service's container (--read-only), on every mount but /proc and
# /sys: the volume and the container's own in-memory IPC folders. In one without --read-only, on the image's
# own file system (the files' owners and modes alone): the volume and the usual world-writable temporary
# folders. And in both, writes tried where the image's files are.
writable() {  # writable FIND-ARGS...: the folders and files found writable, on one line, sorted
  "$@" \( -type d -o -type f \) -writable -print 2>/dev/null | sort | tr '\n' ' ' || true  # (root's unreadable)
}
in_service=$(writable podman exec "$NAME" find / \( -path /proc -o -path /sys -o -path /var/lib/cl_ml_tools/\* \) \
  -prune -o)
in_image=$(writable podman run --rm "${LIMITS[@]}" --no-healthcheck "$IMAGE" find / -xdev)
if [ "$in_service" != "/dev/mqueue /dev/shm /var/lib/cl_ml_tools " ] ||
  [ "$in_image" != "/run/lock /tmp /var/lib/cl_ml_tools /var/tmp " ]; then
  say "writable by the service user: ${in_service% } (the service's container);" \
    "${in_image% } (the image without --read-only)"
  exit 1
fi
try_writes='for d in / /opt /opt/cl_ml_tools /opt/cl_ml_tools/.venv /opt/cl_ml_tools/models /etc /etc/cl_ml_tools \
  /usr; do touch "$d/written" 2>/dev/null && echo "$d"; done
  touch /var/lib/cl_ml_tools/written && rm /var/lib/cl_ml_tools/written'
bad=$(podman exec "$NAME" sh -c "$try_writes")
bad+=$(podman run --rm "${LIMITS[@]}" --no-healthcheck "$IMAGE" sh -c "$try_writes")
[ -z "$bad" ] || { say "the service user could write to: $bad"; exit 1; }
say "writable by the service user: ${in_service% } (--read-only); ${in_image% } (without);" \
  "writes to / /opt /etc /usr and the venv refused"

t=$SECONDS
job=$("$VENV/bin/python" tests/container/check.py jobs "$URL" "$KEY" "$WORK/long.mp4" "$WORK/models")
took "jobs checked" "$t"

# While the hls job runs: tini, the server, its runners and, once the job has got that far, its ffmpeg.
for _ in $(seq 100); do
  processes=$(podman top "$NAME" user,comm | tail -n +2)
  echo "$processes" | grep -qw ffmpeg && break
  sleep 0.3
done
if echo "$processes" | awk '$1 != "cl-ml-tools" {bad = 1} END {exit !bad}' ||
  ! echo "$processes" | grep -qw ffmpeg; then
  say "not every process runs as cl-ml-tools, or no ffmpeg runs:"
  echo "$processes" >&2
  exit 1
fi
say "every process runs as cl-ml-tools: $(echo "$processes" | awk '{printf "%s ", $2}')"

t=$SECONDS
podman stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null
stopped=$((SECONDS - t))
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
# 143: uvicorn ends a graceful shutdown by raising the SIGTERM it caught again; 137 would be podman's SIGKILL.
if [ "$code" -ne 143 ] || [ "$stopped" -ge "$STOP_TIMEOUT" ]; then
  say "stop: exit code $code after $stopped s (timeout $STOP_TIMEOUT s)"
  exit 1
fi
say "SIGTERM: the container ended after $stopped s (stop timeout $STOP_TIMEOUT s), exit code 143"
"$VENV/bin/python" tests/container/check.py requeued "$(podman volume inspect -f '{{.Mountpoint}}' "$VOLUME")" "$job"

# The unit's ExecStart and paths are the image's: verified with the image's /opt/cl_ml_tools in place.
image_mount=$(podman image mount "$IMAGE")
if ! verified=$(unshare --mount sh -c 'mount -t tmpfs tmpfs /opt && mkdir /opt/cl_ml_tools &&
  mount --bind "$1" /opt/cl_ml_tools && systemd-analyze verify deploy/cl-ml-tools.service 2>&1' \
  sh "$image_mount/opt/cl_ml_tools") || [ -n "$verified" ]; then
  say "systemd-analyze verify deploy/cl-ml-tools.service: $verified"
  exit 1
fi
say "systemd-analyze verify deploy/cl-ml-tools.service: clean"

say "passed in $((SECONDS - start)) s"
