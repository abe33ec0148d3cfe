#!/usr/bin/env bash
# Install everything ocifs needs on a fresh Debian machine, idempotently:
# Debian packages, the Python venv (.venv) and the pinned external tools (.tools/bin).
# Re-running skips whatever is already there at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools/bin"
mkdir -p "$TOOLS"

# --- pins -------------------------------------------------------------------
MINIO_MOD=github.com/minio/minio
MINIO_VER=v0.0.0-20260212201848-7aac2a2c5b7c
ORAS_MOD=oras.land/oras/cmd/oras
ORAS_VER=v1.3.6
TOXIPROXY_MOD=github.com/Shopify/toxiproxy/v2/cmd/server
TOXIPROXY_VER=v2.12.0
# fuse3/libfuse3-dev: the mount; the rest are the real programs the tests and bench drive.
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-venv curl s3fs rclone skopeo umoci fio docker-registry)

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python venv -------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.ocifs-deps-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
    log "pip install -e .[test,bench]"
    .venv/bin/pip install -q -e '.[test,bench]' >.venv/pip-install.log 2>&1 || { cat .venv/pip-install.log; exit 1; }
    rm -f .venv/.ocifs-deps-*; touch "$stamp"
fi

# --- pinned Go tools ---------------------------------------------------------
go_tool() {  # name module version [binary name go install produces]
    local name=$1 mod=$2 ver=$3 built=${4:-$1} stampf="$TOOLS/.$1.version"
    if [ -x "$TOOLS/$name" ] && [ "$(cat "$stampf" 2>/dev/null)" = "$mod@$ver" ]; then
        return
    fi
    command -v go >/dev/null || { log "go is required to build $name ($mod@$ver)"; exit 1; }
    log "go install $mod@$ver"
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" GOFLAGS=-mod=mod go install "$mod@$ver"
    mv -f "$tmp/$built" "$TOOLS/$name"
    rm -rf "$tmp"
    echo "$mod@$ver" >"$stampf"
}
go_tool oras  "$ORAS_MOD"  "$ORAS_VER"
go_tool minio "$MINIO_MOD" "$MINIO_VER"
go_tool toxiproxy-server "$TOXIPROXY_MOD" "$TOXIPROXY_VER" server

# --- entry points where systemd units and mount(8) look for them (root only) -------------
if [ "$(id -u)" -eq 0 ]; then
    ln -sfn "$ROOT/.venv/bin/ocifs" /usr/local/bin/ocifs
    ln -sfn "$ROOT/.venv/bin/mount.ocifs" /usr/local/bin/mount.ocifs
    ln -sfn "$ROOT/.venv/bin/mount.ocifs" /sbin/mount.fuse.ocifs  # mount -t fuse.ocifs
fi

log "ready: .venv and $(ls "$TOOLS" | tr '\n' ' ')"
