#!/usr/bin/env bash
# The Python package's tests, as a user would meet it: a fresh virtual
# environment, `pip install ./backup-py` (maturin fetched from PyPI builds
# the extension), then `mypy --strict` on the tests, `mypy.stubtest` on the
# stubs, and pytest. Ends with pytest's summary line.
#
# The extension is built with cargo's dev profile (dependencies are at
# opt-level 3 there, see the root Cargo.toml): the release profile takes
# minutes longer on two cores for no difference the tests can see. Set
# VMBACKUP_PY_PROFILE=release to build as a published wheel would be.
# Cargo's target folder is $CARGO_TARGET_DIR when set, else the workspace's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

have_cmd() { command -v "$1" >/dev/null 2>&1; }
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "test-python: installing python3-venv" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
if ! have_cmd cargo; then
  echo "test-python: cargo (Rust 1.89 or later) is required to build the extension" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmbackup-py.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Twice: ensurepip inside `venv` has been seen to fail once under load.
python3 -m venv "$work/venv" || { rm -rf "$work/venv"; python3 -m venv "$work/venv"; }
py="$work/venv/bin/python"

profile=${VMBACKUP_PY_PROFILE:-dev}
echo "test-python: building and installing ./backup-py (cargo profile $profile)"
started=$SECONDS
"$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$py" -m pip install --quiet --disable-pip-version-check \
  --config-settings=build-args="--profile=$profile" \
  ./backup-py pytest mypy
echo "test-python: installed in $((SECONDS - started)) s"

# The command line and the C library, for the test that reads one backup's
# statistics through Rust, C, Python and JSON (test_statistics.py); cargo
# reuses what the Rust and C suites built.
echo "test-python: building the vmbackup command and libvmbackup"
cargo build --quiet -p backup-cli -p backup-ffi --lib --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
export VMB_CLI="$target_dir/debug/vmbackup"
export VMB_LIBVMBACKUP="$target_dir/debug/libvmbackup.so"

status=0
# From the tests' folder, so that the installed package is the one
# imported, never the source tree's (which has no native module).
cd "$repo/backup-py/tests"
echo "== mypy --strict (tests)"
"$py" -m mypy --strict --no-incremental --cache-dir "$work/mypy-cache" . || status=1
echo "== mypy.stubtest vmbackup"
"$py" -m mypy.stubtest vmbackup || status=1
echo "== pytest"
# Temporary folders are kept for failed tests only: a passing run left
# 850 MB of images in /tmp, three runs' worth by default, on a disk that CI
# shares.
"$py" -m pytest -p no:cacheprovider -o tmp_path_retention_policy=failed "$@" || status=1
exit $status
