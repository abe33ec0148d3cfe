#!/usr/bin/env bash
# Install everything ocifs needs on a fresh Debian machine, idempotently:
# Debian packages, the Python venv (.venv) and the pinned external tools (.tools/bin).
# Re-running skips whatever is already there at the pinned version.
#   OCIFS_VENDOR_DIR=DIR      where the source archives of zot/goofys/geesefs are (see below);
#                             a relative DIR is taken from the repository root
#   OCIFS_NO_SYSTEM_LINKS=1   do not point /usr/local/bin/ocifs & co. at this checkout (worktrees)
# Sourcing this file (tests do) defines the pins and functions and installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools/bin"

# --- pins -------------------------------------------------------------------
MINIO_MOD=github.com/minio/minio
MINIO_VER=v0.0.0-20260212201848-7aac2a2c5b7c
ORAS_MOD=oras.land/oras/cmd/oras
ORAS_VER=v1.3.6
TOXIPROXY_MOD=github.com/Shopify/toxiproxy/v2/cmd/server
TOXIPROXY_VER=v2.12.0
# Go programs the module proxy here does not serve: built from unmodified upstream source
# archives, $OCIFS_VENDOR_DIR/<name>-<ref>.tar.gz (`git archive` of the commit below).
ZOT_REF=v2.1.9      ZOT_COMMIT=73eef25681afcacc372f16ac5159743ab7b373ec
GOOFYS_REF=350ff312 GOOFYS_COMMIT=350ff312abaa1abcf21c5a06e143c7edffe9e2f4  # master: v0.24.0 + fixes
GEESEFS_REF=v0.43.8 GEESEFS_COMMIT=711474d28f52e739f013fd2537054ba870c0b458
# fuse3/libfuse3-dev: the mount; the rest are the real programs the tests and bench drive.
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-venv curl s3fs rclone skopeo umoci fio docker-registry)

log() { printf '[setup] %s\n' "$*" >&2; }
need_go() { command -v go >/dev/null || { log "go is required to build $1"; exit 1; }; }

go_tool() {  # name module version [binary name go install produces]
    local name=$1 mod=$2 ver=$3 built=${4:-$1} stampf="$TOOLS/.$1.version"
    if [ -x "$TOOLS/$name" ] && [ "$(cat "$stampf" 2>/dev/null)" = "$mod@$ver" ]; then
        return
    fi
    need_go "$name ($mod@$ver)"
    log "go install $mod@$ver"
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" GOFLAGS=-mod=mod go install "$mod@$ver"
    mv -f "$tmp/$built" "$TOOLS/$name"
    rm -rf "$tmp"
    echo "$mod@$ver" >"$stampf"
}

# name ref commit upstream-repo go-module|- package ldflags
# `go install module@commit` if a module proxy serves it (asked with a time bound, so a refusal
# costs seconds), else `go build` of $OCIFS_VENDOR_DIR/<name>-<ref>.tar.gz. The ldflags set the
# version variables upstream's Makefile sets, so the binary reports the pinned version either way.
src_tool() {
    local name=$1 ref=$2 commit=$3 repo=$4 mod=$5 pkg=$6 ldflags=$7 stampf="$TOOLS/.$1.version"
    if [ -x "$TOOLS/$name" ] && [ "$(cat "$stampf" 2>/dev/null)" = "$name@$ref $commit" ]; then
        return
    fi
    need_go "$name $ref"
    local tmp archive=${OCIFS_VENDOR_DIR:+$(realpath -m "$OCIFS_VENDOR_DIR/$name-$ref.tar.gz")} why=
    tmp=$(mktemp -d)
    if [ "$mod" != - ] && why=$(cd "$tmp" && GOFLAGS=-mod=mod timeout 60 go mod download "$mod@$commit" 2>&1); then
        log "go install $mod${pkg#.}@$commit"  # names the binary after the package: $name
        GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "$ldflags" "$mod${pkg#.}@$commit"
    elif [ -f "$archive" ]; then
        log "go build $name from $archive"
        mkdir "$tmp/src"
        tar -xzf "$archive" -C "$tmp/src" --strip-components=1
        (cd "$tmp/src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$pkg")
    else
        rm -rf "$tmp"
        why=${why%%$'\n'*}; why=${why##*: }  # the end of go's first line is the proxy's answer
        if [ "$mod" = - ]; then why="$name $ref is not go-installable"
        else why="the Go module proxy refused $mod@$commit (${why:-no answer in 60 s})"; fi
        local make="git clone $repo $name-src && git -C $name-src archive --prefix=$name-$ref/ -o \"\$PWD/$name-$ref.tar.gz\" $commit"
        log "$why, and there is no $name-$ref.tar.gz in OCIFS_VENDOR_DIR=${OCIFS_VENDOR_DIR:-(unset)}:" \
            "set OCIFS_VENDOR_DIR to a directory holding one, made with: $make"
        exit 1
    fi
    mv -f "$tmp/$name" "$TOOLS/$name"
    rm -rf "$tmp"
    echo "$name@$ref $commit" >"$stampf"
}
# zot v2.1.9's go.mod still says `module zotregistry.dev/zot` (the /v2 path came later, zot PR #3462),
# so no proxy can serve zotregistry.dev/zot/v2@v2.1.9. A minimal build (no extensions), as upstream's
# `make binary-minimal`: the local and S3 storage drivers are in.
zot_tool() {
    local cfg=zotregistry.dev/zot/pkg/api/config
    src_tool zot "$ZOT_REF" "$ZOT_COMMIT" https://github.com/project-zot/zot - ./cmd/zot \
        "-X $cfg.ReleaseTag=$ZOT_REF -X $cfg.Commit=$ZOT_REF-0-g${ZOT_COMMIT:0:7} -X $cfg.BinaryType=minimal"
}
goofys_tool() {
    src_tool goofys "$GOOFYS_REF" "$GOOFYS_COMMIT" https://github.com/kahing/goofys github.com/kahing/goofys . \
        "-X main.Version=$GOOFYS_COMMIT"
}
# geesefs's go.mod has `replace` directives, so `go install` cannot build it anywhere.
geesefs_tool() {
    src_tool geesefs "$GEESEFS_REF" "$GEESEFS_COMMIT" https://github.com/yandex-cloud/geesefs - . ""
}

(return 0 2>/dev/null) && return 0  # sourced: definitions only
mkdir -p "$TOOLS"

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
go_tool oras  "$ORAS_MOD"  "$ORAS_VER"
go_tool minio "$MINIO_MOD" "$MINIO_VER"
go_tool toxiproxy-server "$TOXIPROXY_MOD" "$TOXIPROXY_VER" server
zot_tool
goofys_tool
geesefs_tool

# --- entry points where systemd units and mount(8) look for them (root only) -------------
if [ "$(id -u)" -eq 0 ] && [ -z "${OCIFS_NO_SYSTEM_LINKS:-}" ]; then
    ln -sfn "$ROOT/.venv/bin/ocifs" /usr/local/bin/ocifs
    ln -sfn "$ROOT/.venv/bin/mount.ocifs" /usr/local/bin/mount.ocifs
    ln -sfn "$ROOT/.venv/bin/mount.ocifs" /sbin/mount.fuse.ocifs  # mount -t fuse.ocifs
fi

log "ready: .venv and $(ls "$TOOLS" | tr '\n' ' ')"
