#!/usr/bin/env bash
# Build the agentrun sandbox image OFFLINE (no registry needed).
#
#   scripts/build-sandbox-image.sh [--force] [--force-base] [--tag agentrun-sandbox:latest]
#
# Two stages, so that changing the in-container executor does not redo debootstrap:
#   1. base  (agentrun-sandbox-base:bookworm): debootstrap Debian bookworm (minbase plus
#      python3 and a few CLI tools) into a temp dir, add the `agent` user (uid 10001) and
#      an empty /workspace owned by it, strip setuid bits, `tar | docker import`.
#      Takes a few minutes; reuses the base image when it exists (unless --force-base).
#   2. final (agentrun-sandbox:latest by default, $AGENTRUN_SANDBOX_IMAGE overrides):
#      base + sandbox/image/executor.py, committed with USER/WORKDIR/ENV/CMD. Seconds.
# Idempotent: does nothing when the final image exists and carries the current
# executor's digest (unless --force). Needs root (debootstrap) and a reachable Debian
# mirror ($DEBIAN_MIRROR, default http://deb.debian.org/debian).
# With a registry, use sandbox/image/Dockerfile instead (same user, paths and executor).
set -euo pipefail

TAG="${AGENTRUN_SANDBOX_IMAGE:-agentrun-sandbox:latest}"
BASE_TAG="agentrun-sandbox-base:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FORCE=0
FORCE_BASE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) FORCE=1 ;;
    --force-base) FORCE=1; FORCE_BASE=1 ;;
    --tag) TAG="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXECUTOR="$HERE/sandbox/image/executor.py"
EXEC_DIGEST="$(sha256sum "$EXECUTOR" | cut -c1-16)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ $FORCE -eq 0 ]] && image_exists "$TAG"; then
  have="$(docker image inspect -f '{{ index .Config.Labels "agentrun.executor" }}' "$TAG" 2>/dev/null || true)"
  if [[ "$have" == "$EXEC_DIGEST" ]]; then
    echo "$TAG exists (executor $EXEC_DIGEST); use --force to rebuild"
    exit 0
  fi
  echo "$TAG has executor '$have', current is $EXEC_DIGEST: rebuilding the final stage"
fi

if [[ $FORCE_BASE -eq 1 ]] || ! image_exists "$BASE_TAG"; then
  ROOTFS="$(mktemp -d /tmp/agentrun-rootfs.XXXXXX)"
  trap 'rm -rf "$ROOTFS"' EXIT
  PACKAGES="python3-minimal,python3,coreutils,bash,findutils,grep,sed,procps,ca-certificates"
  PACKAGES="$PACKAGES,diffutils,patch,less,file,jq,git,unzip,xz-utils,bzip2,tree"
  echo "debootstrap bookworm into $ROOTFS (a few minutes)"
  nice -n 10 debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR"
  # The agent user, without useradd (keeps minbase minimal and the step reproducible).
  echo 'agent:x:10001:10001:agentrun sandbox:/home/agent:/bin/bash' >> "$ROOTFS/etc/passwd"
  echo 'agent:x:10001:' >> "$ROOTFS/etc/group"
  echo 'agent:!:19000:0:99999:7:::' >> "$ROOTFS/etc/shadow"
  mkdir -p "$ROOTFS/workspace" "$ROOTFS/home/agent" "$ROOTFS/opt/agentrun"
  # A fresh named volume copies the ownership of the directory it is mounted over,
  # which is how the non-root agent gets a writable /workspace.
  chown 10001:10001 "$ROOTFS/workspace" "$ROOTFS/home/agent"
  chmod 0755 "$ROOTFS/workspace"
  # Nothing in the sandbox may gain privileges (no-new-privileges is set too).
  find "$ROOTFS" -xdev -type f -perm /6000 -exec chmod ug-s {} +
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
  tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    - "$BASE_TAG"
  rm -rf "$ROOTFS"
  trap - EXIT
fi

# Final stage: base + executor, without a Dockerfile (nothing to pull, no builder needed).
OLD_ID="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
CID="$(docker create "$BASE_TAG" /bin/true)"
trap 'docker rm -f "$CID" >/dev/null 2>&1 || true' EXIT
docker cp "$EXECUTOR" "$CID:/opt/agentrun/executor.py"
docker commit \
  --change 'USER 10001:10001' \
  --change 'WORKDIR /workspace' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV HOME=/home/agent' \
  --change "LABEL agentrun.executor=$EXEC_DIGEST" \
  --change 'CMD ["python3", "-I", "-S", "/opt/agentrun/executor.py"]' \
  "$CID" "$TAG" >/dev/null
if [[ -n "$OLD_ID" ]]; then
  # The previous build, now untagged; kept only if a container still uses it.
  docker image rm "$OLD_ID" >/dev/null 2>&1 || true
fi
echo "built $TAG (executor $EXEC_DIGEST)"
