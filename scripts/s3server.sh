#!/usr/bin/env bash
# An S3-compatible server for the remote-vault tests: moto's server (PyPI
# `moto[server]`), which honours create-only puts (If-None-Match: *).
#
#   scripts/s3server.sh start     prints shell exports (eval them)
#   scripts/s3server.sh stop PID
#
# start installs moto into a virtual environment in $VMB_MOTO_HOME (default
# /var/tmp/vmbackup-moto, outside the clone; reused when present), starts
# moto_server on a free loopback port, creates the buckets `vmbackup` and
# `vmbackup-locked` (the latter with S3 Object Lock, for immutable vaults),
# and prints VMB_S3=http://127.0.0.1:PORT, VMB_S3_PID, test credentials
# (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; moto accepts any)
# and VMB_S3_PYTHON, a Python with boto3 (the tests' independent S3 client).
set -euo pipefail
home="${VMB_MOTO_HOME:-/var/tmp/vmbackup-moto}"

case "${1:-}" in
  start)
    if [ ! -x "$home/bin/moto_server" ]; then
      echo "s3server: installing moto[server] from PyPI into $home" >&2
      rm -rf "$home"
      python3 -m venv "$home"
      "$home/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    log="$(mktemp /tmp/vmbackup-moto.XXXXXX.log)"
    "$home/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 300); do
      code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/vmbackup" || true)"
      [ "$code" = 200 ] && break
      kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
      sleep 0.1
    done
    [ "$code" = 200 ] || { echo "s3server: no answer on port $port" >&2; kill "$pid"; exit 1; }
    code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'x-amz-bucket-object-lock-enabled: true' \
      "http://127.0.0.1:$port/vmbackup-locked")"
    [ "$code" = 200 ] || { echo "s3server: cannot create the Object Lock bucket ($code)" >&2; kill "$pid"; exit 1; }
    echo "export VMB_S3=http://127.0.0.1:$port VMB_S3_PID=$pid VMB_S3_LOG=$log"
    echo "export AWS_ACCESS_KEY_ID=vmbackup-test AWS_SECRET_ACCESS_KEY=vmbackup-test AWS_REGION=us-east-1"
    echo "export VMB_S3_PYTHON=$home/bin/python"
    ;;
  stop)
    pid="${2:?usage: s3server.sh stop PID}"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 start | stop PID" >&2
    exit 2
    ;;
esac
