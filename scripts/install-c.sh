#!/usr/bin/env bash
# Builds the C library of vmbackup and installs it into PREFIX:
#   PREFIX/lib/libvmbackup.so.VERSION with the links libvmbackup.so.ABI (the
#   SONAME, see backup-ffi/build.rs) and libvmbackup.so, PREFIX/lib/libvmbackup.a,
#   PREFIX/include/vmbackup.h, PREFIX/lib/pkgconfig/vmbackup.pc
#
# usage: scripts/install-c.sh [--release|--debug] PREFIX
#   (default --release; PROFILE=debug in the environment does the same)
# then:  PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs vmbackup)
# Static: cc app.c $(pkg-config --cflags vmbackup) PREFIX/lib/libvmbackup.a $(pkg-config --static --libs-only-other --libs-only-l vmbackup | sed 's/-lvmbackup//')
set -euo pipefail

profile="${PROFILE:-release}"
prefix=""
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        --debug) profile=debug ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "install-c.sh: unknown option $arg" >&2; exit 2 ;;
        *) prefix="$arg" ;;
    esac
done
if [ -z "$prefix" ]; then
    echo "usage: scripts/install-c.sh [--release|--debug] PREFIX" >&2
    exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

cargo_flags=(-p backup-ffi --lib)
[ "$profile" = release ] && cargo_flags+=(--release)
echo "install-c.sh: building backup-ffi ($profile)" >&2
cargo build "${cargo_flags[@]}" >&2

# Where cargo put it: honours CARGO_TARGET_DIR and .cargo/config.
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
out="$target_dir/$profile"
version="$(cargo pkgid -p backup-ffi | sed 's/.*[#@]//')"

# The libraries the static library needs, as rustc reports them.
native_libs="$(cargo rustc "${cargo_flags[@]}" --crate-type staticlib -- --print native-static-libs 2>&1 \
    | sed -n 's/.*native-static-libs: //p' | tail -n 1)"
[ -n "$native_libs" ] || native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
# The file under its full version; the SONAME link (what a linked host
# asks the loader for) and the development link (what -lvmbackup finds).
soname="$(readelf -d "$out/libvmbackup.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
[ -n "$soname" ] || { echo "install-c.sh: $out/libvmbackup.so has no SONAME" >&2; exit 1; }
install -m 0755 "$out/libvmbackup.so" "$prefix/lib/libvmbackup.so.$version"
ln -sfn "libvmbackup.so.$version" "$prefix/lib/$soname"
ln -sfn "$soname" "$prefix/lib/libvmbackup.so"
install -m 0644 "$out/libvmbackup.a" "$prefix/lib/libvmbackup.a"
install -m 0644 include/vmbackup.h "$prefix/include/vmbackup.h"
install -d "$prefix/share/vmbackup"
install -m 0644 backup-ffi/vmbackup.supp "$prefix/share/vmbackup/vmbackup.supp"
cat > "$prefix/lib/pkgconfig/vmbackup.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: vmbackup
Description: Back up virtual machine disks into a deduplicating vault (C ABI)
Version: $version
Libs: -L\${libdir} -lvmbackup
Libs.private: $native_libs
Cflags: -I\${includedir}
PC
echo "install-c.sh: installed vmbackup $version ($profile) into $prefix" >&2
