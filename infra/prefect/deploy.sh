#!/bin/sh
# One-shot job of the stack: the work pool, the Prefect variables the nightly deployment reads, then
# `prefect deploy --all` of the project's prefect.yaml (from /app, where the image keeps the code, so
# the process worker's flow runs start there too) with the stack's stores as parameter defaults.
set -eu
cd /app
POOL="${PREFECT_WORK_POOL:-prefcurate-process}"
if prefect work-pool inspect "$POOL" > /dev/null 2>&1; then
  echo "work pool $POOL exists"
else
  prefect work-pool create "$POOL" --type process
fi
setvar() {  # name value: set a Prefect variable when the value is given
  if [ -n "$2" ]; then prefect variable set "$1" "$2" --overwrite > /dev/null && echo "variable $1 set"; fi
}
setvar prefcurate_model_uri "${PREFCURATE_MODEL_URI:-}"
setvar prefcurate_pool_uri "${PREFCURATE_POOL_URI:-}"
setvar prefcurate_timezone "${PREFCURATE_TIMEZONE:-}"
python /opt/infra/prefect/stack_defaults.py prefect.yaml /tmp/prefect.stack.yaml
prefect --no-prompt deploy --all --prefect-file /tmp/prefect.stack.yaml
prefect deployment ls
