# shellcheck shell=bash
# Install what unship's demo and tests need, each piece only if it is missing (idempotent).
#
# Sourced by ./dev (functions only, nothing runs at source time); it can also be run directly:
#   scripts/bootstrap.sh venv   # .venv with unship installed editable, test extras included
#   scripts/bootstrap.sh all    # the above plus the system packages and npm deps the tests start
# Works on Debian 12 as root (CI) or as a user with sudo. Quiet unless something fails: then the
# output of the failing command is shown.

BOOTSTRAP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${BOOTSTRAP_ROOT}/.venv"
VENV_STAMP="${VENV_DIR}/.unship-install-stamp"
POSTGRES_INITDB=/usr/lib/postgresql/15/bin/initdb
UNLEASH_DIR="${BOOTSTRAP_ROOT}/services/unleash"
_APT_UPDATED=0

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command with its output kept in a log; print the log only if it fails.
run_quiet() {
    local log rc=0
    log="$(mktemp -t unship-bootstrap.XXXXXX)"
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf 'error: command failed (exit %s): %s\n' "$rc" "$*" >&2
        tail -n 60 "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}

join_by() {
    local sep="$1" out="$2"
    shift 2
    local item
    for item in "$@"; do out+="${sep}${item}"; done
    printf '%s' "$out"
}

# apt-get install the given Debian packages (as root, or through sudo); `apt-get update` once per run.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install these Debian packages by hand: $*"
    local root=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing $* needs root: run as root or install sudo"
        root=(sudo)
    fi
    if [ "$_APT_UPDATED" -eq 0 ]; then
        run_quiet "${root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _APT_UPDATED=1
    fi
    run_quiet "${root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# .venv with unship installed editable (+ test extras); reinstalled whenever pyproject.toml changes.
bootstrap_venv() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found (unship needs Python 3.11+)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "unship needs Python 3.11+, found $(python3 --version 2>&1)"
    if [ ! -x "${VENV_DIR}/bin/python" ]; then
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            say "installing python3-venv (Debian)"
            apt_install python3-venv
        fi
        say "creating .venv"
        run_quiet python3 -m venv "$VENV_DIR"
    fi
    local want have=""
    want="$(sha256_of "${BOOTSTRAP_ROOT}/pyproject.toml")"
    if [ -f "$VENV_STAMP" ]; then have="$(cat "$VENV_STAMP")"; fi
    if [ "$want" != "$have" ]; then
        say "installing unship and its Python dependencies into .venv (pip)"
        run_quiet "${VENV_DIR}/bin/python" -m pip install --disable-pip-version-check -q -e "${BOOTSTRAP_ROOT}[test]"
        printf '%s\n' "$want" >"$VENV_STAMP"
    fi
}

# Debian packages the tests run for real: Prometheus + Alertmanager, PostgreSQL 15, Chromium (the console's
# browser tests drive it through Playwright's Python package; no browser is downloaded at run time) and
# rsvg-convert (librsvg2-bin), a real SVG renderer that checks the tabletop report's charts.
bootstrap_debian() {
    local missing=() names=()
    if ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); names+=(chromium); fi
    if ! command -v rsvg-convert >/dev/null 2>&1; then missing+=(librsvg2-bin); names+=("librsvg2-bin (rsvg-convert)"); fi
    if ! command -v prometheus >/dev/null 2>&1; then missing+=(prometheus); names+=(prometheus); fi
    if ! command -v prometheus-alertmanager >/dev/null 2>&1; then
        missing+=(prometheus-alertmanager); names+=(prometheus-alertmanager)
    fi
    if [ ! -x "$POSTGRES_INITDB" ]; then missing+=(postgresql); names+=("postgresql (15)"); fi
    if [ "${#missing[@]}" -eq 0 ]; then return 0; fi
    say "installing $(join_by ', ' "${names[@]}") (Debian)"
    apt_install "${missing[@]}"
    if [ ! -x "$POSTGRES_INITDB" ]; then
        die "PostgreSQL 15 is still missing ($POSTGRES_INITDB): this needs Debian 12's postgresql package"
    fi
}

# npm deps of the pinned Unleash server, when the project has a lock file for it.
bootstrap_npm() {
    local lock="${UNLEASH_DIR}/package-lock.json" installed="${UNLEASH_DIR}/node_modules/.package-lock.json"
    [ -f "$lock" ] || return 0
    if [ -f "$installed" ] && [ ! "$lock" -nt "$installed" ]; then return 0; fi
    command -v npm >/dev/null 2>&1 || die "npm not found: the Unleash tests need Node.js 20+ with npm"
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
        || die "the Unleash tests need Node.js 20+, found $(node --version)"
    say "installing Unleash server (npm ci in services/unleash)"
    run_quiet npm ci --prefix "$UNLEASH_DIR" --no-audit --no-fund --loglevel=error
    touch "$installed"
}

bootstrap_all() {
    bootstrap_venv
    bootstrap_debian
    bootstrap_npm
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-all}" in
        venv) bootstrap_venv ;;
        all) bootstrap_all ;;
        *) die "usage: scripts/bootstrap.sh [venv|all]" ;;
    esac
fi
