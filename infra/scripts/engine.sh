#!/usr/bin/env bash
# Docker engine for infra-test on a Debian machine like the project's (root, package registry only):
#   engine.sh start STATE_DIR   install docker.io, docker-compose, mmdebstrap if missing; start dockerd
#                               when no engine answers (its PID goes to STATE_DIR/dockerd.pid)
#   engine.sh stop STATE_DIR    stop dockerd by that PID, only if `start` started it
#   engine.sh base              build prefcurate/base:bookworm from Debian's packages if missing
set -euo pipefail
cmd="${1:?start|stop|base}"; state="${2:-}"

need_pkgs() {
  local missing=()
  command -v dockerd > /dev/null || missing+=(docker.io)
  command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing+=(docker-compose)
  command -v mmdebstrap > /dev/null || missing+=(mmdebstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "engine: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
  fi
}

debian_mirror() {  # the Debian URI this machine's apt sources already use for bookworm
  local uri
  uri=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /bookworm( |$)/ && u !~ /security/) {print u; exit} }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(grep -h -E '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | sed -E 's/\[[^]]*\]//' | awk '$3 == "bookworm" {print $2; exit}' || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

case "$cmd" in
  start)
    need_pkgs
    if docker info > /dev/null 2>&1; then echo "engine: a Docker engine is already running"; exit 0; fi
    mkdir -p "$state"
    nohup dockerd --storage-driver=overlay2 > "$state/dockerd.log" 2>&1 &
    echo $! > "$state/dockerd.pid"
    for _ in $(seq 60); do docker info > /dev/null 2>&1 && { echo "engine: dockerd started (pid $(cat "$state/dockerd.pid"))"; exit 0; }; sleep 1; done
    echo "engine: dockerd did not start, see $state/dockerd.log" >&2; exit 1 ;;
  stop)
    if [ -f "$state/dockerd.pid" ]; then
      pid=$(cat "$state/dockerd.pid")
      kill "$pid" 2> /dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2> /dev/null || break; sleep 1; done
      rm -f "$state/dockerd.pid"; echo "engine: dockerd (pid $pid) stopped"
    fi ;;
  base)
    if docker image inspect prefcurate/base:bookworm > /dev/null 2>&1; then exit 0; fi
    tmp=$(mktemp -d); mirror=$(debian_mirror)
    echo "engine: building prefcurate/base:bookworm from $mirror (mmdebstrap)"
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,passwd bookworm "$tmp/base.tar" \
      "deb $mirror bookworm main"
    docker import "$tmp/base.tar" prefcurate/base:bookworm > /dev/null
    rm -rf "$tmp" ;;
  *) echo "usage: engine.sh start|stop STATE_DIR | base" >&2; exit 2 ;;
esac
