#!/usr/bin/env bash
# `make infra-test`: the production stack of infra/ proven end to end on this machine.
#
# From a machine with root and Debian's package registry: installs and starts a Docker engine if
# none runs (and stops it afterwards), builds the base image, the product image and the local
# stand-ins for the two images that cannot be pulled here (postgres, MinIO), starts the stack with
# those stand-ins through POSTGRES_IMAGE / S3_IMAGE, triggers curate/curate on the small toy world
# through the stack's Prefect API (`prefect deployment run … --watch`, scoring on the Dask workers),
# checks the results (tests/infra/check_stack.py), restarts the stack, reruns, and tears it all down.
# Not part of `make test`. Env: KEEP_STACK=1 leaves the stack and dockerd up when the test stops early
# (a failed step; a full run always tears down); INFRA_TEST_WORK (build/infra-test): logs, summary.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
WORK="${INFRA_TEST_WORK:-$ROOT/build/infra-test}"
PROJECT="${INFRA_TEST_PROJECT:-prefcurate-infra-test}"
IMAGE="${PREFCURATE_IMAGE:-prefcurate/worker:cpu}"
RUN="${INFRA_TEST_RUN:-infra-test}"
INPROC="$RUN-inprocess"
export PREFCURATE_IMAGE="$IMAGE"
export POSTGRES_IMAGE="${POSTGRES_IMAGE:-prefcurate/postgres-standin:15}"
export S3_IMAGE="${S3_IMAGE:-prefcurate/s3-standin:moto}"
export PREFECT_PORT="${PREFECT_PORT:-4200}" MLFLOW_PORT="${MLFLOW_PORT:-5000}" S3_PORT="${S3_PORT:-9000}" S3_CONSOLE_PORT="${S3_CONSOLE_PORT:-9001}"
export PREFECT_UI_API_URL="http://127.0.0.1:$PREFECT_PORT/api" MLFLOW_UI_URL="http://127.0.0.1:$MLFLOW_PORT"
rm -rf "$WORK"; mkdir -p "$WORK/out"; chmod 777 "$WORK/out"
T0=$(date +%s)
passed=0; failed=0; figures=()
ok()   { passed=$((passed + 1)); echo "  PASS $*"; }
bad()  { failed=$((failed + 1)); echo "  FAIL $*"; }
secs() { echo $(( $(date +%s) - $1 )); }
fmt()  { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# --- engine, compose --------------------------------------------------------------------
infra/scripts/engine.sh start "$WORK"
if docker compose version > /dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
ENV_FILE="$WORK/stack.env"
compose() { "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" -f infra/compose.yaml "$@"; }
cleanup() {
  rc=$?
  if [ "${KEEP_STACK:-0}" != 1 ] && [ -f "$ENV_FILE" ]; then
    compose logs --no-color > "$WORK/stack.log" 2>&1 || true
    compose --profile gpu down -v --remove-orphans > /dev/null 2>&1 || compose down -v --remove-orphans > /dev/null 2>&1 || true
  fi
  if [ "${KEEP_STACK:-0}" != 1 ]; then infra/scripts/engine.sh stop "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

# credentials for this test only: random, in $WORK (never infra/.env, never committed)
rand() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
PG_PW=$(rand); PF_PW=$(rand); ML_PW=$(rand); ML_KEY=$(rand); S3_PW=$(rand)
cat > "$ENV_FILE" <<ENV
POSTGRES_USER=prefcurate
POSTGRES_PASSWORD=$PG_PW
PREFECT_AUTH_STRING=prefcurate:$PF_PW
MLFLOW_ADMIN_USER=admin
MLFLOW_ADMIN_PASSWORD=$ML_PW
MLFLOW_SECRET_KEY=$ML_KEY
S3_ACCESS_KEY=prefcurate
S3_SECRET_KEY=$S3_PW
ENV
chmod 600 "$ENV_FILE"
SECRETS="$(printf '%s\n' "$PG_PW" "$PF_PW" "$ML_PW" "$ML_KEY" "$S3_PW")"

# --- images -----------------------------------------------------------------------------
echo "== images"
t=$(date +%s); infra/scripts/engine.sh base; BASE_S=$(secs "$t")
t=$(date +%s); BUILD_LOGS="$WORK/build" docker/build.sh --standins; BUILD_S=$(secs "$t")
SIZE=$(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')
echo "  base image $(fmt "$BASE_S") (0 when present), images $(fmt "$BUILD_S"), $IMAGE $SIZE"
if docker run --rm "$IMAGE" prefcurate --help > /dev/null; then ok "prefcurate --help in the image"; else bad "prefcurate --help"; fi
[ "$(docker run --rm "$IMAGE" id -u)" != 0 ] && ok "image runs as a non-root user" || bad "image runs as root"
# what the process worker does with a flow run: load each prefect.yaml entrypoint from /app
if docker run --rm "$IMAGE" python -c "
import yaml
from prefect.flows import load_flow_from_entrypoint
for d in yaml.safe_load(open('prefect.yaml'))['deployments']:
    load_flow_from_entrypoint(d['entrypoint'], use_placeholder_flow=False)" > "$WORK/entrypoints.log" 2>&1; then
  ok "every prefect.yaml entrypoint loads in the image's /app"
else
  tail -n 5 "$WORK/entrypoints.log"; bad "prefect.yaml entrypoints do not load in /app"
fi
t=$(date +%s)
if docker run --rm --network none "$IMAGE" prefcurate demo --size small > "$WORK/demo-offline.log" 2>&1 \
   && grep -q "^Leaderboard" "$WORK/demo-offline.log"; then
  DEMO_S=$(secs "$t"); ok "offline: docker run --network none $IMAGE prefcurate demo --size small prints the leaderboard ($(fmt "$DEMO_S"))"
  grep -A 6 "^Leaderboard" "$WORK/demo-offline.log" | sed 's/^/    /'
else
  DEMO_S=$(secs "$t"); tail -n 20 "$WORK/demo-offline.log"; bad "offline demo in the image"
fi

# --- the stack --------------------------------------------------------------------------
echo "== stack up"
compose down -v --remove-orphans > /dev/null 2>&1 || true
t=$(date +%s)
wait_stack() {  # up -d, then wait until every healthcheck passes, the deploy job is done and a worker polls
  compose up -d > "$WORK/up-$1.log" 2>&1 || { tail -n 20 "$WORK/up-$1.log"; return 1; }
  for _ in $(seq 120); do
    if docker run --rm --network host -e PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api" \
         -e PREFECT_API_AUTH_STRING="prefcurate:$PF_PW" "$IMAGE" \
         python -c "
import httpx, os, sys
r = httpx.get(os.environ['PREFECT_API_URL'] + '/work_pools/prefcurate-process', auth=tuple(os.environ['PREFECT_API_AUTH_STRING'].split(':', 1)), timeout=10)
sys.exit(0 if r.status_code == 200 and r.json()['status'] == 'READY' else 1)" 2> /dev/null; then
      return 0
    fi
    sleep 5
  done
  echo "stack did not become ready"; compose ps; return 1
}
wait_stack 1
START_S=$(secs "$t")
unhealthy=$(compose ps | grep -c -E "unhealthy|Exit [1-9]" || true)
[ "$unhealthy" = 0 ] && ok "stack up: every healthcheck passes, work pool READY ($(fmt "$START_S"))" || { compose ps; bad "unhealthy services"; }

P() {  # a product container on the host network, reaching the stack through 127.0.0.1 only
  docker run --rm --network host -v "$ROOT/tests/infra:/checks:ro" -v "$WORK/out:/out" \
    -e PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api" -e PREFECT_API_AUTH_STRING="prefcurate:$PF_PW" \
    -e MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT" -e MLFLOW_TRACKING_USERNAME=admin -e MLFLOW_TRACKING_PASSWORD="$ML_PW" \
    -e AWS_ACCESS_KEY_ID=prefcurate -e AWS_SECRET_ACCESS_KEY="$S3_PW" -e AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" \
    -e AWS_DEFAULT_REGION=us-east-1 -e CHECK_SECRETS="$SECRETS" "$IMAGE" "$@"
}
checks() {  # phase args…: run check_stack.py, count its JSON results
  local out; out=$(P python /checks/check_stack.py "$@" 2>"$WORK/check-$1.err") || true
  echo "$out" >> "$WORK/checks.jsonl"
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    name=$(echo "$line" | sed -E 's/^\{"check": "([^"]*)".*/\1/')
    if echo "$line" | grep -q '"ok": true'; then ok "$name"; else bad "$name :: $line"; fi
  done <<< "$out"
  [ -n "$out" ] || { bad "check_stack.py $1 printed nothing"; tail -n 20 "$WORK/check-$1.err"; }
}

# --- the toy world on S3, the same config in-process, then through the stack -----------------
echo "== toy world (small) on s3://prefcurate/toyworld-small"
compose exec -T worker sh -c 'prefcurate toyworld build --out /tmp/toyworld-small --size small --seed 0 > /dev/null && python -c "
import s3fs; s3fs.S3FileSystem().put(\"/tmp/toyworld-small/\", \"s3://prefcurate/toyworld-small/\", recursive=True)"' > "$WORK/toyworld.log" 2>&1 || { tail -n 20 "$WORK/toyworld.log"; exit 1; }
params() {  # run-name runner -> the flow parameters
  python3 - "$1" "$2" <<'PY'
import json, sys
name, runner = sys.argv[1:3]
w = "s3://prefcurate/toyworld-small"
config = {
    "root": "s3://prefcurate/runs", "run_name": name,
    "model": {"uri": f"{w}/model"},
    "data": {"pool_uri": f"{w}/data/pool.parquet", "validation_uri": f"{w}/data/validation.parquet",
             "eval_prompts_uri": f"{w}/data/eval_prompts.json"},
    "defects_uri": f"{w}/data/defects.parquet",
    "scoring": {"shard_size": 60},
    "scaleout": ({"task_runner": "dask", "address": "tcp://dask-scheduler:8786", "torch_threads": 1}
                 if runner == "dask" else {"task_runner": "local", "torch_threads": 1}),
    "evaluation": {"judge": {"kind": "oracle"}, "generation": {"do_sample": True, "seed": 0}},
    "tracking": {"tracking_uri": "http://mlflow:5000", "experiment": "prefcurate-infra-test",
                 "register_model": "prefcurate-infra-test"},
}
if runner == "local":  # same config, in the worker's own process; its MLflow runs stay out of the stack's
    config["tracking"] = {"tracking_uri": "sqlite:////tmp/inprocess-mlflow.db", "experiment": "inprocess",
                          "register_model": None}
print(json.dumps(config if runner == "local" else {"config": config}))
PY
}
echo "== in-process reference run ($INPROC)"
t=$(date +%s)
params "$INPROC" local | compose exec -T worker sh -c 'cat > /tmp/inprocess.json && prefcurate curate --config /tmp/inprocess.json' \
  > "$WORK/inprocess.log" 2>&1 && ok "in-process run of the same config ($(fmt "$(secs "$t")"))" || { tail -n 30 "$WORK/inprocess.log"; bad "in-process run"; }
INPROC_S=$(secs "$t")

run_deployment() {  # log-name: prefect deployment run curate/curate --watch through the published API
  P prefect deployment run curate/curate --params "$(params "$RUN" dask)" --flow-run-name "$RUN" \
    --watch --watch-timeout 1800 > "$WORK/$1.log" 2>&1
}
echo "== curate/curate through the stack's Prefect API ($RUN, scoring on Dask)"
t=$(date +%s)
if run_deployment run; then ok "prefect deployment run curate/curate --watch exits 0"; else tail -n 30 "$WORK/run.log"; bad "deployment run"; fi
RUN_S=$(secs "$t")
checks after-run "$RUN" "$INPROC" /out
workers_used=0
for w in dask-worker-1 dask-worker-2; do
  n=$(compose logs --no-color "$w" 2>&1 | grep -c -E "score-shard-[0-9]+ done" || true)
  echo "    $w scored $n shard(s)"; [ "$n" -gt 0 ] && workers_used=$((workers_used + 1))
done
[ "$workers_used" -ge 2 ] && ok "scoring shards ran on $workers_used Dask workers" || bad "shards ran on $workers_used Dask worker(s)"
compose logs --no-color > "$WORK/stack-1.log" 2>&1 || true
leaks=0; while IFS= read -r s; do [ -n "$s" ] && grep -qF -- "$s" "$WORK/stack-1.log" "$WORK/run.log" && leaks=$((leaks + 1)); done <<< "$SECRETS"
[ "$leaks" = 0 ] && ok "no credential in any service log" || bad "$leaks credential(s) found in the logs"

# --- state survives down/up; a rerun skips every finished stage ------------------------------
echo "== compose down; compose up"
compose down > "$WORK/down.log" 2>&1
t=$(date +%s); wait_stack 2; RESTART_S=$(secs "$t")
ok "stack back up after down/up ($(fmt "$RESTART_S"))"
checks after-restart "$RUN" /out
echo "== rerun of $RUN"
t=$(date +%s)
if run_deployment rerun; then ok "rerun of the same run name Completed"; else tail -n 30 "$WORK/rerun.log"; bad "rerun"; fi
RERUN_S=$(secs "$t")
checks after-rerun "$RUN" /out

# --- teardown ----------------------------------------------------------------------------
echo "== teardown"
compose logs --no-color > "$WORK/stack.log" 2>&1 || true
compose down -v --remove-orphans > "$WORK/down-final.log" 2>&1
left=$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[ "$left" = 0 ] && ok "compose down -v leaves no container of the stack" || bad "$left containers left"
running=$(docker ps -q | wc -l)
[ "$running" = 0 ] && ok "no container running on the engine" || bad "$running container(s) still running"
TOTAL_S=$(secs "$T0")
trap - EXIT
infra/scripts/engine.sh stop "$WORK"
summary="infra-test: $([ "$failed" = 0 ] && echo PASSED || echo FAILED) $passed/$((passed + failed)) checks | images built in $(fmt "$BUILD_S") (+ base $(fmt "$BASE_S")), $IMAGE $SIZE | offline demo $(fmt "$DEMO_S") | stack up $(fmt "$START_S"), restart $(fmt "$RESTART_S") | curate via Prefect+Dask $(fmt "$RUN_S") (in-process $(fmt "$INPROC_S")), rerun $(fmt "$RERUN_S") | total $(fmt "$TOTAL_S") | containers left: $running"
echo "$summary" | tee "$WORK/summary.txt"
[ "$failed" = 0 ]
