#!/usr/bin/env bash
# Type-check (cargo check) and lint (cargo clippy -D warnings) the readiness
# crate for the kqueue OSes, which cannot run here: FreeBSD, macOS, and NetBSD
# (the pipe wake-up fallback used where rustix has no EVFILT_USER). Builds std
# from source (-Zbuild-std) with Debian's rustc 1.96, so no rustup target is
# needed; nothing is linked or run.
#
# Usage:
#   scripts/check-cross.sh [WORKSPACE_DIR]
#
# WORKSPACE_DIR defaults to $WORKSPACE_DIR, else the repository root (the
# parent of this script's directory).
#
# Environment knobs (all optional):
#   CROSS_TARGETS      space-separated target triples (default:
#                      x86_64-unknown-freebsd aarch64-apple-darwin
#                      x86_64-unknown-netbsd)
#   CROSS_PACKAGES     packages to check (space- or comma-separated; default
#                      readiness)
#   CROSS_CARGO_ARGS   extra args for cargo check/clippy (word-split), e.g.
#                      "--all-targets"
#   CROSS_CLIPPY=0     skip clippy (only cargo check)
#   CROSS_TARGET_DIR   cargo target dir (default WORKSPACE_DIR/target/cross)
#   CROSS_SKIP_APT=1   never try to apt-get install missing tools
#
# Installs rustc-web cargo-web rust-web-src rust-web-clippy (and MinGW's
# binutils for i686-pc-windows-gnu) with apt-get if
# /usr/bin/rustc is not 1.96 or a piece is missing. Prints one line per step
# and a final `check-cross: N passed, M failed`; exits non-zero if any step
# failed.

set -euo pipefail

RUSTC_BIN=/usr/bin/rustc
CARGO_BIN=/usr/bin/cargo
CLIPPY_BIN=/usr/bin/cargo-clippy
RUST_VERSION_WANTED=1.96
APT_PACKAGES=(rustc-web cargo-web rust-web-src rust-web-clippy binutils-mingw-w64-i686 binutils-mingw-w64-x86-64)
DEFAULT_TARGETS="x86_64-unknown-freebsd aarch64-apple-darwin x86_64-unknown-netbsd"

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[check-cross] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# ---------------------------------------------------------------- arguments
case "${1:-}" in
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
(($# <= 1)) || die "usage: $0 [WORKSPACE_DIR]"
WORKSPACE_DIR=${1:-${WORKSPACE_DIR:-$(cd -- "$SCRIPT_DIR/.." && pwd)}}
WORKSPACE_DIR=$(cd -- "$WORKSPACE_DIR" && pwd) || die "no such workspace dir"
[[ -f "$WORKSPACE_DIR/Cargo.toml" ]] || die "$WORKSPACE_DIR/Cargo.toml not found"

read -r -a TARGETS <<<"${CROSS_TARGETS:-$DEFAULT_TARGETS}"
((${#TARGETS[@]})) || die "CROSS_TARGETS is empty"
PKG_ARGS=()
for p in ${CROSS_PACKAGES:-readiness}; do
    for q in ${p//,/ }; do PKG_ARGS+=(-p "$q"); done
done
EXTRA_ARGS=()
if [[ -n "${CROSS_CARGO_ARGS:-}" ]]; then
    read -r -a EXTRA_ARGS <<<"$CROSS_CARGO_ARGS"
fi
WANT_CLIPPY=${CROSS_CLIPPY:-1}
TARGET_DIR=${CROSS_TARGET_DIR:-$WORKSPACE_DIR/target/cross}

# ---------------------------------------------------------------- toolchain
have_tools() {
    [[ -x "$RUSTC_BIN" && -x "$CARGO_BIN" ]] || return 1
    "$RUSTC_BIN" --version | grep -q "^rustc $RUST_VERSION_WANTED\." || return 1
    [[ -f "$("$RUSTC_BIN" --print sysroot)/lib/rustlib/src/rust/library/Cargo.lock" ]] || return 1
    # std for Windows links its import libraries with MinGW's dlltool (a
    # fresh machine has neither; scripts/test-windows.sh installs the 64-bit
    # one too, but this script may run first).
    if [[ " ${TARGETS[*]} " == *" i686-pc-windows-gnu "* ]]; then
        command -v i686-w64-mingw32-dlltool >/dev/null || return 1
    fi
    if [[ " ${TARGETS[*]} " == *" x86_64-pc-windows-gnu "* ]]; then
        command -v x86_64-w64-mingw32-dlltool >/dev/null || return 1
    fi
    if [[ "$WANT_CLIPPY" != 0 ]]; then
        [[ -x "$CLIPPY_BIN" ]] || return 1
        "$CLIPPY_BIN" --version | grep -q "^clippy 0\.1\.${RUST_VERSION_WANTED#1.}\b" || return 1
    fi
}
if ! have_tools; then
    [[ "${CROSS_SKIP_APT:-0}" == 1 ]] && die "Debian Rust $RUST_VERSION_WANTED toolchain missing and CROSS_SKIP_APT=1"
    log "installing: ${APT_PACKAGES[*]}"
    SUDO=()
    ((EUID == 0)) || SUDO=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
    have_tools || die "toolchain still incomplete after apt-get install"
fi
log "$("$RUSTC_BIN" --version)"

# Use only the Debian tools: RUSTC for cargo, CARGO for cargo-clippy (which
# otherwise runs whatever `cargo` is first on PATH), and call cargo-clippy
# directly, because cargo puts ~/.cargo/bin (rustup's proxies) first on PATH
# when it looks up a subcommand. RUSTC_BOOTSTRAP=1 lets the stable compiler
# take -Zbuild-std.
export RUSTC="$RUSTC_BIN" CARGO="$CARGO_BIN" RUSTC_BOOTSTRAP=1
unset RUSTUP_TOOLCHAIN RUSTC_WORKSPACE_WRAPPER

# ---------------------------------------------------------------- checks
cd "$WORKSPACE_DIR"
passed=0
failed=0
failures=()
step() {
    local name=$1
    shift
    log "$name: $*"
    if "$@"; then
        passed=$((passed + 1))
        log "$name: ok"
    else
        failed=$((failed + 1))
        failures+=("$name")
        log "$name: FAILED"
    fi
}

for target in "${TARGETS[@]}"; do
    common=(-Zbuild-std "${PKG_ARGS[@]}" --target "$target" --target-dir "$TARGET_DIR" "${EXTRA_ARGS[@]}")
    step "check $target" "$CARGO_BIN" check "${common[@]}"
    if [[ "$WANT_CLIPPY" != 0 ]]; then
        step "clippy $target" "$CLIPPY_BIN" clippy "${common[@]}" -- -D warnings
    fi
done

if ((failed)); then
    log "failed: ${failures[*]}"
fi
echo "check-cross: $passed passed, $failed failed"
((failed == 0))
