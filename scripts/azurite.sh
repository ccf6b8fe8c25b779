#!/usr/bin/env bash
# Azurite (Microsoft's Azure Storage emulator) for the remote-vault tests.
#
#   scripts/azurite.sh start [PORT|- [LOCATION]]   prints shell exports (eval them)
#   scripts/azurite.sh stop PID
#
# start installs Azurite from npm into $VMB_AZURITE_HOME (default
# /var/tmp/vmbackup-azurite, outside the clone; reused when present),
# starts azurite-blob on 127.0.0.1 (a free port unless PORT is given; - for a free one) with
# its data in LOCATION (a new temporary folder unless given), waits until it
# answers, creates the container `vmbackup`, and prints:
#   VMB_AZURITE=http://127.0.0.1:PORT   (the tests' switch)
#   VMB_AZURITE_PID, VMB_AZURITE_LOCATION, VMB_AZURITE_PORT
#   AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=...   (what object_store reads)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${VMB_AZURITE_HOME:-/var/tmp/vmbackup-azurite}"
bin="$home/node_modules/.bin/azurite-blob"

install() {
  [ -x "$bin" ] && return 0
  command -v npm >/dev/null || { echo "azurite: npm (node 18 or later) is required" >&2; exit 1; }
  mkdir -p "$home"
  echo "azurite: installing from npm into $home" >&2
  (cd "$home" && npm install --no-audit --no-fund --loglevel=error azurite@3 >&2)
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

case "${1:-}" in
  start)
    install
    port="${2:--}"
    [ "$port" != "-" ] || port="$(free_port)"
    location="${3:-$(mktemp -d /tmp/vmbackup-azurite.XXXXXX)}"
    mkdir -p "$location"
    "$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$location" \
      --skipApiVersionCheck --loose --silent --disableTelemetry >"$location/azurite.log" 2>&1 </dev/null &
    pid=$!
    # Wait for it to answer and make the container (idempotent: 409 when it exists).
    python3 - "$port" <<'PY' || { kill "$pid" 2>/dev/null; cat "$location/azurite.log" >&2; exit 1; }
import base64, hashlib, hmac, http.client, sys, time
from email.utils import formatdate
port = int(sys.argv[1])
account = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
path = f"/{account}/vmbackup"
deadline = time.time() + 60
while True:
    date = formatdate(usegmt=True)
    headers = {"x-ms-date": date, "x-ms-version": "2021-08-06", "Content-Length": "0"}
    canon = "".join(f"{k}:{headers[k]}\n" for k in sorted(h for h in headers if h.startswith("x-ms-")))
    to_sign = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + canon + f"/{account}{path}\nrestype:container"
    sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = f"SharedKey {account}:{sig}"
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("PUT", path + "?restype=container", headers=headers)
        r = c.getresponse()
        body = r.read()
        if r.status in (201, 409):
            sys.exit(0)
        print(f"azurite: creating the container answered {r.status}: {body[:300]!r}", file=sys.stderr)
        sys.exit(1)
    except OSError:
        if time.time() > deadline:
            print("azurite: no answer on port %d after 60 s" % port, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.2)
PY
    url="http://127.0.0.1:$port"
    echo "export VMB_AZURITE=$url VMB_AZURITE_PID=$pid VMB_AZURITE_PORT=$port VMB_AZURITE_LOCATION=$location"
    echo "export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=$url"
    echo "export VMB_AZURITE_SCRIPT=$here/azurite.sh"
    ;;
  stop)
    pid="${2:?usage: azurite.sh stop PID}"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 start [PORT [LOCATION]] | stop PID" >&2
    exit 2
    ;;
esac
