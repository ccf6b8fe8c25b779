#!/usr/bin/env bash
# The C ABI's whole test: builds backup-ffi, installs it into a temporary
# prefix with scripts/install-c.sh, checks that the installed header
# compiles as C and C++, builds the C and C++ hosts of tests/c against the
# installed header and pkg-config file (and one against the static
# library), runs them, then runs them again under valgrind memcheck (no
# leak, no invalid read or write). Ends with "C tests: N passed, M failed".
#
# usage: scripts/test-c.sh            (debug build; PROFILE=release for release)
# env:   VMB_SKIP_CARGO_TEST=1 skips `cargo test -p backup-ffi` (header check)
#        VMB_SKIP_VALGRIND=1 skips the valgrind runs
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="${PROFILE:-debug}"

# Tools, installed when missing.
need=()
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -n "${VMB_SKIP_VALGRIND:-}" ] || command -v valgrind >/dev/null || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
    echo "test-c.sh: installing ${need[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null || {
        echo "test-c.sh: cannot install ${need[*]}" >&2
        exit 1
    }
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/vmbackup-test-c.XXXXXX")"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
bin="$work/bin"
mkdir -p "$bin"
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "ok - $1 (${SECONDS}s)"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1 (${SECONDS}s)"; }

if ! scripts/install-c.sh "--$profile" "$prefix"; then
    echo "test-c.sh: the build or install failed" >&2
    echo "C tests: $passed passed, $((failed + 1)) failed"
    exit 1
fi
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# files.c makes its guest disk with the script the Rust tests use.
export VMB_GUEST_DISK_SCRIPT="$PWD/testkit/guest-disk.sh"

if [ -z "${VMB_SKIP_CARGO_TEST:-}" ]; then
    if cargo test -q -p backup-ffi >"$work/cargo-test.log" 2>&1; then
        pass "cargo test -p backup-ffi (unit tests, header up to date)"
    else
        cat "$work/cargo-test.log"
        fail "cargo test -p backup-ffi (regenerate a stale header: VMB_BLESS=1 cargo test -p backup-ffi --test header)"
    fi
fi

# The installed header on its own, strictly, as C and as C++.
cflags="$(pkg-config --cflags vmbackup)"
libs="$(pkg-config --libs vmbackup)"
# shellcheck disable=SC2086
if echo '#include <vmbackup.h>' | cc -std=c11 -Wall -Wextra -Werror -pedantic $cflags -x c -fsyntax-only -; then
    pass "header compiles as C11"
else
    fail "header compiles as C11"
fi
# shellcheck disable=SC2086
if echo '#include <vmbackup.h>' | c++ -std=c++17 -Wall -Wextra -Werror -pedantic $cflags -x c++ -fsyntax-only -; then
    pass "header compiles as C++17"
else
    fail "header compiles as C++17"
fi
# A status dropped unread is a warning (VMB_MUST_USE), and the version is
# known to the preprocessor.
dropped='#include <vmbackup.h>
int main(void) { vmb_job_cancel(0); return 0; }'
checked='#include <vmbackup.h>
#if !defined(VMB_VERSION_MAJOR) || !defined(VMB_VERSION_MINOR) || !defined(VMB_VERSION_PATCH)
#error no version macros
#endif
int main(void) { return vmb_job_cancel(0) == VMB_OK; }'
# shellcheck disable=SC2086
if ! echo "$dropped" | cc -std=c11 -Werror=unused-result $cflags -x c -c -o /dev/null - 2>/dev/null &&
    echo "$checked" | cc -std=c11 -Wall -Werror $cflags -x c -fsyntax-only -; then
    pass "a dropped status warns; version macros"
else
    fail "a dropped status warns; version macros"
fi

# The hosts, built as a user would: pkg-config and the installed header.
programs=()
build() { # name, compiler command...
    local name="$1"
    shift
    if "$@" -o "$bin/$name"; then
        pass "build $name"
        programs+=("$name")
    else
        fail "build $name"
    fi
}
# shellcheck disable=SC2086
build host-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/host.c $cflags $libs
# shellcheck disable=SC2086
build errors-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/errors.c $cflags $libs
# shellcheck disable=SC2086
build encryption-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/encryption.c $cflags $libs
# shellcheck disable=SC2086
build libvirt-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/libvirt.c $cflags $libs
# shellcheck disable=SC2086
build tiers-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/tiers.c $cflags $libs
# shellcheck disable=SC2086
build reader-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/reader.c $cflags $libs
# shellcheck disable=SC2086
build files-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/files.c $cflags $libs
# shellcheck disable=SC2086
build protection-c cc -std=c11 -Wall -Wextra -Werror -g tests/c/protection.c $cflags $libs
# shellcheck disable=SC2086
build host-cpp c++ -std=c++17 -Wall -Wextra -Werror -g tests/c/host.cpp $cflags $libs -pthread
# The static library, with the system libraries pkg-config lists for it.
static_libs="$(pkg-config --static --libs-only-l vmbackup | sed 's/-lvmbackup//')"
# shellcheck disable=SC2086
build errors-c-static cc -std=c11 -Wall -Wextra -Werror -g tests/c/errors.c $cflags \
    "$prefix/lib/libvmbackup.a" $static_libs

# The README's example builds as the README says, shared and static, and
# backs up a real image file into a real vault (below).
sed -n '/^```c$/,/^```$/p' backup-ffi/README.md | sed '1d;$d' >"$work/readme.c"
# shellcheck disable=SC2086
build readme-example cc -std=c11 -Wall -Wextra -Werror "$work/readme.c" $cflags $libs
# shellcheck disable=SC2086
build readme-example-static cc -std=c11 -Wall -Wextra -Werror "$work/readme.c" $cflags \
    "$prefix/lib/libvmbackup.a" $static_libs
head -c 2097152 /dev/urandom >"$work/readme-boot.img"

# Runs a program; its "ok - " and "FAIL - " lines are the cases.
run() { # label, command...
    local label="$1"
    shift
    local out="$work/out.txt"
    "$@" >"$out" 2>"$work/err.txt"
    local rc=$?
    local ok bad
    ok=$(grep -c '^ok - ' "$out")
    bad=$(grep -c '^FAIL - ' "$out")
    sed "s/^/[$label] /" "$out"
    passed=$((passed + ok))
    failed=$((failed + bad))
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        cat "$work/err.txt" >&2
        fail "$label exited with status $rc"
    elif [ "$rc" -ne 0 ]; then
        cat "$work/err.txt" >&2
    fi
    return $rc
}

# A host linked against the library asks the loader for its SONAME (the
# ABI version), not for the unversioned development link.
if [ -x "$bin/host-c" ]; then
    needed="$(readelf -d "$bin/host-c" | sed -n 's/.*(NEEDED).*\[\(libvmbackup[^]]*\)\]/\1/p')"
    soname="$(readelf -d "$prefix/lib/libvmbackup.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
    if [ -n "$soname" ] && [ "$needed" = "$soname" ] && [ "$soname" != libvmbackup.so ] && [ -e "$prefix/lib/$soname" ]; then
        pass "host-c needs $needed, the installed library's SONAME"
    else
        fail "host-c needs '$needed', the library's SONAME is '$soname'"
    fi
fi

# The README's example: its output names the point; a second run is an
# incremental of the same VM in the same vault.
readme_run() { # label, command...
    local label="$1"
    shift
    if "$@" >"$work/readme.out" 2>&1 && grep -q '^point .*bytes read' "$work/readme.out"; then
        pass "$label"
    else
        cat "$work/readme.out"
        fail "$label"
    fi
}
for p in "${programs[@]}"; do
    case "$p" in
    readme-example*) readme_run "$p backs up an image and a callback disk" \
        timeout 120 "$bin/$p" "$work/readme-vault" "$work/readme-boot.img" ;;
    *) run "$p" timeout 120 "$bin/$p" ;;
    esac
done

if [ -z "${VMB_SKIP_VALGRIND:-}" ]; then
    for p in "${programs[@]}"; do
        # memcheck's default leak kinds (definite and possible) with the
        # installed suppressions for the library's worker threads, as the
        # README tells a host to run it.
        vg=(timeout 300 valgrind -q --leak-check=full --error-exitcode=1
            --suppressions="$prefix/share/vmbackup/vmbackup.supp")
        case "$p" in
        errors-c-static) continue ;; # the shared build of the same test runs
        # A process that serves its own FUSE mount (the vault mount, the
        # kernel's ext4/XFS over a FUSE file) cannot run under valgrind
        # 3.19: its stat waits on a thread valgrind will not schedule, and
        # --sim-hints=fuse-compatible asserts inside valgrind on readlink.
        # The FUSE-free cases (volumes, FAT, errors) run under memcheck.
        files-c)
            if run "valgrind $p --no-fuse" "${vg[@]}" "$bin/$p" --no-fuse; then
                pass "valgrind memcheck clean: $p --no-fuse"
            else
                fail "valgrind memcheck clean: $p --no-fuse"
            fi
            ;;
        readme-example*) readme_run "valgrind memcheck clean: $p" \
            "${vg[@]}" "$bin/$p" "$work/readme-vault" "$work/readme-boot.img" ;;
        *)
            if run "valgrind $p" "${vg[@]}" "$bin/$p"; then
                pass "valgrind memcheck clean: $p"
            else
                fail "valgrind memcheck clean: $p"
            fi
            ;;
        esac
    done
fi

echo "C tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
