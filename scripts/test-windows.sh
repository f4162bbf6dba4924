#!/usr/bin/env bash
# Cross-build the workspace's test binaries for x86_64-pc-windows-gnu and run
# them under Wine, once per Windows backend.
#
# Usage:
#   scripts/test-windows.sh [WORKSPACE_DIR] [-- LIBTEST_ARGS...]
#
# WORKSPACE_DIR defaults to $WORKSPACE_DIR, else the repository root (the
# parent of this script's directory).  Anything after `--` goes to every test
# binary (e.g. `-- --nocapture some_test_name`).
#
# Environment knobs (all optional):
#   WINE_TEST_PACKAGES      packages to build instead of --workspace
#                           (space- or comma-separated; each becomes -p NAME)
#   WINE_TEST_CARGO_ARGS    extra args for `cargo test --no-run` (word-split)
#   WINE_TEST_BINARIES      only run binaries whose target name matches one of
#                           these globs (space-separated; default: all)
#   WINE_DIRECT_BINARIES    globs of binaries that are run a second time with
#                           READINESS_TEST_BACKEND=direct (overrides the
#                           DIRECT_BACKEND_BINARIES list below)
#   WINE_TEST_ARGS          extra libtest args (word-split), e.g. "--nocapture"
#   WINE_TEST_THREADS       passed as --test-threads=N
#   WINE_TEST_TIMEOUT       seconds per binary per backend (default 600)
#   WINE_TEST_JOBS          cargo -j (default: cargo's default)
#   WINE_TARGET_DIR         cargo target dir (default WORKSPACE_DIR/target/wine)
#   WINE_SKIP_APT=1         never try to apt-get install missing tools
#
# Output: per-binary logs in $WINE_TARGET_DIR/logs, a per-backend summary and
# a final line `wine: N passed, M failed`.  Exit status is non-zero if any
# binary failed, timed out or crashed, if the build failed, or if no test ran.

set -euo pipefail

# Binaries (globs on the cargo target name, i.e. the test file's stem) that are
# also run with READINESS_TEST_BACKEND=direct.  Add net-layer tests here later.
DIRECT_BACKEND_BINARIES=(
    'conformance*'
    'reuse*'
    'model*'
    'suite*'
    'leaks*'
    'events_doc*'
    'contract*'
    'poller_repro*'
)
# Every binary runs with this backend.
DEFAULT_BACKEND=afd

TARGET_TRIPLE=x86_64-pc-windows-gnu
RUSTC_BIN=/usr/bin/rustc
CARGO_BIN=/usr/bin/cargo
MINGW_CC=x86_64-w64-mingw32-gcc
WINE_BIN=/usr/lib/wine/wine64
RUST_VERSION_WANTED=1.96
APT_PACKAGES=(rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine64 python3)

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
SHIM_SRC="$SCRIPT_DIR/windows/processprng-shim.c"
SHIM_DEF="$SCRIPT_DIR/windows/processprng-shim.def"

log() { printf '[test-windows] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
now() { date +%s; }

# ---------------------------------------------------------------- arguments
LIBTEST_EXTRA=()
WS_ARG=""
while (($#)); do
    case "$1" in
        --) shift; LIBTEST_EXTRA+=("$@"); break ;;
        -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) [[ -z "$WS_ARG" ]] || die "unexpected argument: $1"; WS_ARG=$1; shift ;;
    esac
done
WORKSPACE_DIR=${WS_ARG:-${WORKSPACE_DIR:-$(cd -- "$SCRIPT_DIR/.." && pwd)}}
WORKSPACE_DIR=$(cd -- "$WORKSPACE_DIR" && pwd) || die "no such workspace dir"
[[ -f "$WORKSPACE_DIR/Cargo.toml" ]] || die "$WORKSPACE_DIR/Cargo.toml not found"

WINE_TARGET_DIR=${WINE_TARGET_DIR:-$WORKSPACE_DIR/target/wine}
TIMEOUT_SECS=${WINE_TEST_TIMEOUT:-600}
if [[ -n "${WINE_DIRECT_BINARIES:-}" ]]; then
    read -r -a DIRECT_BACKEND_BINARIES <<<"$WINE_DIRECT_BINARIES"
fi

# ---------------------------------------------------------------- toolchain
have_tools() {
    [[ -x "$RUSTC_BIN" && -x "$CARGO_BIN" && -x "$WINE_BIN" ]] || return 1
    command -v "$MINGW_CC" >/dev/null || return 1
    command -v python3 >/dev/null || return 1
    [[ -d "$("$RUSTC_BIN" --print sysroot)/lib/rustlib/src/rust/library/std" ]] || return 1
    "$RUSTC_BIN" --version | grep -q "^rustc $RUST_VERSION_WANTED\." || return 1
}
if ! have_tools; then
    [[ "${WINE_SKIP_APT:-0}" == 1 ]] && die "toolchain missing and WINE_SKIP_APT=1"
    log "installing: ${APT_PACKAGES[*]}"
    SUDO=()
    ((EUID == 0)) || SUDO=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
    have_tools || die "toolchain still incomplete after apt-get install"
fi
WINE_LIBDIR=$(dirname -- "$(readlink -f "$WINE_BIN")")
if [[ -x "$WINE_LIBDIR/wineserver64" ]]; then WINESERVER_BIN=$WINE_LIBDIR/wineserver64
elif [[ -x "$WINE_LIBDIR/wineserver" ]]; then WINESERVER_BIN=$WINE_LIBDIR/wineserver
else WINESERVER_BIN=$(command -v wineserver) || die "wineserver not found"
fi

mkdir -p "$WINE_TARGET_DIR"
# One run per target dir at a time: a second run would delete our prefix.
exec 9>"$WINE_TARGET_DIR/.lock"
if ! flock -n 9; then
    log "another test-windows.sh run holds $WINE_TARGET_DIR/.lock; waiting"
    flock 9
fi

PREFIX="$WINE_TARGET_DIR/prefix"
LOG_DIR="$WINE_TARGET_DIR/logs"
export WINEPREFIX="$PREFIX" WINEARCH=win64 WINEDEBUG=-all
# No Mono/Gecko install prompts; we never need .NET or HTML rendering.
export WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY

# Kills every process started in our prefix. `wineserver -k` does that while
# the server lives; if wineserver itself crashed (seen here: an assertion in
# server/fd.c under socket stress), its children (winedevice.exe, services.exe)
# are orphans only this scan finds.
kill_prefix_processes() {
    local pid env
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}; pid=${pid%/environ}
        [[ $pid == "$$" ]] && continue
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qxF "WINEPREFIX=$PREFIX"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

# Whether a wineserver of our prefix is running. It is started persistent
# (`-p`) before the runs, so its absence after a binary means it died (seen
# here: an assertion in server/fd.c under socket stress).
wineserver_alive() {
    local pid env comm
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}; pid=${pid%/environ}
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        [[ $comm == wineserver* ]] || continue
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qxF "WINEPREFIX=$PREFIX"; then
            return 0
        fi
    done
    return 1
}

# Starts the persistent server and its system processes for the runs.
start_wineserver() {
    "$WINESERVER_BIN" -p
    "$WINE_BIN" cmd /c exit 9>&- </dev/null >>"$LOG_DIR/wineboot.log" 2>&1
}

cleanup() {
    local rc=$?
    if [[ -d "$PREFIX" ]]; then
        timeout 30 "$WINESERVER_BIN" -k >/dev/null 2>&1 9>&- || true
        timeout 30 "$WINESERVER_BIN" -w >/dev/null 2>&1 9>&- || true
        kill_prefix_processes
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
T0=$(now)
CARGO_ARGS=(test --no-run --message-format=json -Zbuild-std --target "$TARGET_TRIPLE" --tests)
if [[ -n "${WINE_TEST_PACKAGES:-}" ]]; then
    for p in ${WINE_TEST_PACKAGES//,/ }; do CARGO_ARGS+=(-p "$p"); done
else
    CARGO_ARGS+=(--workspace)
fi
[[ -n "${WINE_TEST_JOBS:-}" ]] && CARGO_ARGS+=(-j "$WINE_TEST_JOBS")
if [[ -n "${WINE_TEST_CARGO_ARGS:-}" ]]; then
    read -r -a extra <<<"$WINE_TEST_CARGO_ARGS"
    CARGO_ARGS+=("${extra[@]}")
fi

BUILD_JSON="$WINE_TARGET_DIR/build.json"
BUILD_DIAG="$WINE_TARGET_DIR/build-diagnostics.txt"
log "building test binaries for $TARGET_TRIPLE in $WORKSPACE_DIR (target dir $WINE_TARGET_DIR)"
log "cargo ${CARGO_ARGS[*]}"
set +e
(
    cd "$WORKSPACE_DIR"
    RUSTC_BOOTSTRAP=1 RUSTC="$RUSTC_BIN" RUSTDOC="$(dirname "$RUSTC_BIN")/rustdoc" \
    CARGO_TARGET_DIR="$WINE_TARGET_DIR" \
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER="$MINGW_CC" \
        "$CARGO_BIN" "${CARGO_ARGS[@]}" >"$BUILD_JSON"
)
BUILD_RC=$?
set -e

# Pull rendered compiler diagnostics and test executables out of the JSON.
EXES_TSV="$WINE_TARGET_DIR/test-exes.tsv"
python3 - "$BUILD_JSON" "$BUILD_DIAG" "$EXES_TSV" <<'PY'
import json, sys
src, diag_path, exes_path = sys.argv[1:4]
seen, rows, errors, warnings = set(), [], [], 0
with open(diag_path, "w") as diag:
    for line in open(src, errors="replace"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            m = json.loads(line)
        except ValueError:
            continue
        r = m.get("reason")
        if r == "compiler-message":
            msg = m.get("message", {})
            rendered = msg.get("rendered") or msg.get("message", "")
            diag.write(rendered + "\n")
            if msg.get("level") in ("error", "error: internal compiler error"):
                errors.append(rendered)
            elif msg.get("level") == "warning":
                warnings += 1
        elif r == "compiler-artifact" and m.get("executable") and m["profile"].get("test"):
            exe = m["executable"]
            if exe in seen:
                continue
            seen.add(exe)
            t = m["target"]
            name = t["name"].replace("-", "_")
            kind = t["kind"][0] if t["kind"] else "?"
            pkg = m["package_id"]
            # package_id: "path+file:///x/y#name@0.1.0" or "...#0.1.0" (name = dir)
            frag = pkg.rsplit("#", 1)[-1]
            pkgname = frag.split("@")[0] if "@" in frag else pkg.rsplit("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            label = f"{pkgname}/{name}" if kind == "test" else f"{pkgname}/{kind}:{name}"
            pkgdir = m.get("manifest_path", "").rsplit("/", 1)[0] or "."
            rows.append((label, name, kind, exe, pkgdir))
for e in errors:
    sys.stderr.write(e + "\n")
if warnings:
    sys.stderr.write(f"[test-windows] {warnings} compiler warning(s); see {diag_path}\n")
rows.sort()
with open(exes_path, "w") as f:
    for r in rows:
        f.write("\t".join(r) + "\n")
PY
T_BUILD=$(($(now) - T0))
if ((BUILD_RC != 0)); then
    log "build FAILED (cargo exit $BUILD_RC) after ${T_BUILD}s; diagnostics in $BUILD_DIAG"
    echo "wine: build failed for $TARGET_TRIPLE, no test ran"
    echo "wine: 0 passed, 0 failed"
    exit 2
fi
log "build ok in ${T_BUILD}s"

# ---------------------------------------------------------------- select binaries
matches_any() { # name pattern...
    local n=$1 p; shift
    for p in "$@"; do
        # shellcheck disable=SC2053
        [[ $n == $p ]] && return 0
    done
    return 1
}
RUN_FILTER=()
[[ -n "${WINE_TEST_BINARIES:-}" ]] && read -r -a RUN_FILTER <<<"$WINE_TEST_BINARIES"
LABELS=() NAMES=() EXES=() DIRS=()
while IFS=$'\t' read -r label name kind exe pkgdir; do
    [[ -n "$exe" ]] || continue
    if ((${#RUN_FILTER[@]})) && ! matches_any "$name" "${RUN_FILTER[@]}"; then continue; fi
    LABELS+=("$label") NAMES+=("$name") EXES+=("$exe") DIRS+=("$pkgdir")
done <"$EXES_TSV"
if ((${#EXES[@]} == 0)); then
    log "no test binaries were built (or none matched WINE_TEST_BINARIES)"
    echo "wine: 0 passed, 0 failed"
    exit 2
fi
log "${#EXES[@]} test binaries"

# ---------------------------------------------------------------- wine prefix
T0=$(now)
timeout 30 "$WINESERVER_BIN" -k >/dev/null 2>&1 9>&- || true   # stale server from a killed run
kill_prefix_processes
rm -rf -- "$PREFIX"
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log
log "creating fresh Wine prefix $PREFIX"
# "failed to open ...syswow64\rundll32.exe" is expected: no 32-bit Wine here.
"$WINE_BIN" wineboot --init 9>&- </dev/null >"$LOG_DIR/wineboot.log" 2>&1 ||
    { cat "$LOG_DIR/wineboot.log" >&2; die "wineboot --init failed"; }
"$WINESERVER_BIN" -w   # let wineboot finish and flush the registry
SYS32="$PREFIX/drive_c/windows/system32"
[[ -d "$SYS32" ]] || die "prefix has no system32; see $LOG_DIR/wineboot.log"

# Rust's std imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks.
# Install our shim unless this Wine ships a builtin one.  A DLL that Wine has
# no builtin for is loaded natively from system32, so no override is needed.
if ls "$WINE_LIBDIR"/../x86_64-windows/bcryptprimitives.dll \
      /usr/lib/x86_64-linux-gnu/wine/x86_64-windows/bcryptprimitives.dll >/dev/null 2>&1; then
    log "Wine has a builtin bcryptprimitives.dll; not installing the shim"
else
    "$MINGW_CC" -shared -O2 -s -Wall -Wextra -nostdlib -Wl,--entry,DllMain \
        -o "$WINE_TARGET_DIR/bcryptprimitives.dll" "$SHIM_SRC" "$SHIM_DEF" \
        -ladvapi32 -lkernel32
    cp "$WINE_TARGET_DIR/bcryptprimitives.dll" "$SYS32/bcryptprimitives.dll"
fi
# Keep one server and its system processes (services.exe, winedevice.exe, ...)
# alive for all runs, started here with their stdio away from the tests' logs;
# the EXIT trap kills them.
start_wineserver ||
    { cat "$LOG_DIR/wineboot.log" >&2; die "cannot start a Windows process in the prefix"; }
T_PREFIX=$(($(now) - T0))
log "prefix ready in ${T_PREFIX}s"

# ---------------------------------------------------------------- run
LIBTEST_ARGS=()
[[ -n "${WINE_TEST_THREADS:-}" ]] && LIBTEST_ARGS+=("--test-threads=$WINE_TEST_THREADS")
if [[ -n "${WINE_TEST_ARGS:-}" ]]; then
    read -r -a extra <<<"$WINE_TEST_ARGS"
    LIBTEST_ARGS+=("${extra[@]}")
fi
LIBTEST_ARGS+=("${LIBTEST_EXTRA[@]}")

R_BACKEND=() R_LABEL=() R_PASS=() R_FAIL=() R_IGN=() R_STATUS=()
FAILURES=()
TOTAL_PASS=0 TOTAL_FAIL=0 WINESERVER_CRASHES=0

describe_rc() {
    case "$1" in
        0) echo ok ;;
        101) echo "exit 101 (test failures)" ;;
        124|137) echo "TIMEOUT after ${TIMEOUT_SECS}s" ;;
        53) echo "exit 53 (c0000135: DLL not found / missing import)" ;;
        5) echo "exit 5 (c0000005: access violation?)" ;;
        9) echo "exit 9 (c0000409: abort / fail-fast?)" ;;
        253) echo "exit 253 (c00000fd: stack overflow?)" ;;
        *) echo "exit $1" ;;
    esac
}

run_one() { # backend index
    local backend=$1 i=$2
    local label=${LABELS[$i]} exe=${EXES[$i]}
    local safe=${label//\//__}
    local logf="$LOG_DIR/$backend-${safe//:/_}.log"
    log "[$backend] $label"
    # Output goes to a file, not a pipe: Wine system processes (services.exe,
    # winedevice.exe, ...) started on behalf of a test inherit its stdio and
    # outlive it, so a pipe (e.g. to tee) would never see EOF.  `tail --pid`
    # streams the log and stops when the test process is gone.
    # Like `cargo test`, run from the package's directory.
    : >"$logf"   # exists before tail opens it
    (cd "${DIRS[$i]}" && exec env READINESS_TEST_BACKEND="$backend" \
        timeout -k 30 "$TIMEOUT_SECS" "$WINE_BIN" "$exe" "${LIBTEST_ARGS[@]}" 9>&- \
        </dev/null >>"$logf" 2>&1) &
    local pid=$!
    tail -n +1 -f --pid="$pid" "$logf" 2>/dev/null || true
    local rc=0
    wait "$pid" || rc=$?
    local pass=0 fail=0 ign=0 seen=0 line
    while IFS= read -r line; do
        line=${line%$'\r'}
        if [[ $line =~ ^test\ result:\ [A-Za-z]+\.\ ([0-9]+)\ passed\;\ ([0-9]+)\ failed\;\ ([0-9]+)\ ignored ]]; then
            seen=1
            pass=$((pass + BASH_REMATCH[1]))
            fail=$((fail + BASH_REMATCH[2]))
            ign=$((ign + BASH_REMATCH[3]))
        fi
    done <"$logf"
    local status crashed=0
    status=$(describe_rc "$rc")
    if ! wineserver_alive; then
        # The server died under this binary: say so loudly, count it as a
        # failure whatever the binary printed, and give the next binaries a
        # fresh server.
        crashed=1
        log "WINESERVER CRASHED while running [$backend] $label (see $logf)"
        echo "WINESERVER CRASHED while running [$backend] $label" >>"$logf"
        kill_prefix_processes
        start_wineserver || log "could not restart wineserver"
        status="WINESERVER CRASHED (the binary: $status)"
        ((rc != 0)) || rc=1
    fi
    if ((rc != 0)); then
        if ((seen == 0 && crashed == 0)); then
            if ((rc == 124 || rc == 137)); then status="$status, no libtest summary"
            else status="$status, no libtest summary (crash?)"; fi
        fi
        # A crash, timeout or non-zero exit with no failed test still counts.
        ((fail > 0)) || fail=1
        ((crashed == 0)) || WINESERVER_CRASHES=$((WINESERVER_CRASHES + 1))
        FAILURES+=("$backend $label: $status (log: $logf)")
    elif ((seen == 0)); then
        status="ok, no libtest summary (harness = false?)"
        pass=1
    fi
    R_BACKEND+=("$backend") R_LABEL+=("$label") R_PASS+=("$pass") R_FAIL+=("$fail")
    R_IGN+=("$ign") R_STATUS+=("$status")
    TOTAL_PASS=$((TOTAL_PASS + pass)) TOTAL_FAIL=$((TOTAL_FAIL + fail))
}

T0=$(now)
BACKENDS_RUN=("$DEFAULT_BACKEND")
for i in "${!EXES[@]}"; do run_one "$DEFAULT_BACKEND" "$i"; done
DIRECT_ANY=0
for i in "${!EXES[@]}"; do
    if matches_any "${NAMES[$i]}" "${DIRECT_BACKEND_BINARIES[@]}"; then
        ((DIRECT_ANY)) || BACKENDS_RUN+=(direct)
        DIRECT_ANY=1
        run_one direct "$i"
    fi
done
T_RUN=$(($(now) - T0))

# ---------------------------------------------------------------- summary
echo
for b in "${BACKENDS_RUN[@]}"; do
    echo "=== Windows (Wine) results, READINESS_TEST_BACKEND=$b ==="
    printf '%-44s %7s %7s %8s  %s\n' binary passed failed ignored status
    bp=0 bf=0 bi=0
    for j in "${!R_LABEL[@]}"; do
        [[ ${R_BACKEND[$j]} == "$b" ]] || continue
        printf '%-44s %7d %7d %8d  %s\n' "${R_LABEL[$j]}" "${R_PASS[$j]}" \
            "${R_FAIL[$j]}" "${R_IGN[$j]}" "${R_STATUS[$j]}"
        bp=$((bp + R_PASS[j])) bf=$((bf + R_FAIL[j])) bi=$((bi + R_IGN[j]))
    done
    printf '%-44s %7d %7d %8d\n\n' "total ($b)" "$bp" "$bf" "$bi"
done
if ((${#FAILURES[@]})); then
    echo "failed binaries:"
    printf '  %s\n' "${FAILURES[@]}"
    echo
fi
if ((WINESERVER_CRASHES)); then
    echo "WINESERVER CRASHED $WINESERVER_CRASHES time(s): see docs/WINDOWS.md (Wine's own failures)"
fi
echo "timings: build ${T_BUILD}s, prefix ${T_PREFIX}s, run ${T_RUN}s"
echo "wine: $TOTAL_PASS passed, $TOTAL_FAIL failed"

if ((TOTAL_FAIL > 0)); then exit 1; fi
if ((TOTAL_PASS == 0)); then log "no test ran"; exit 1; fi
exit 0
