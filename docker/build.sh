#!/usr/bin/env bash
# Build the product image (and, with --standins, the local stand-ins for postgres and MinIO).
#   docker/build.sh [--standins]      env: BASE_IMAGE, TORCH_VARIANT, IMAGE (default prefcurate/worker:cpu)
# The torch wheel pip would take on this machine (its find-links, e.g. /opt/wheels) and the extra CA
# certificates of a TLS-inspecting proxy are copied into the build context (both ignored by git);
# they stay in the build stage. Builds use the host network so pip and apt reach their registries.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-prefcurate/worker:cpu}"
BASE_IMAGE="${BASE_IMAGE:-prefcurate/base:bookworm}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"
LOGS="${BUILD_LOGS:-build/docker}"; mkdir -p "$LOGS"
build() {  # log-name docker-build-args...: the full log in $LOGS, its tail on failure
  local log="$LOGS/$1.log"; shift
  docker build --network host "$@" > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "build failed: $log" >&2; return 1; }
}

rm -f docker/wheels/torch-*.whl
for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2> /dev/null || true) /opt/wheels; do
  wheel=$(ls "$dir"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2> /dev/null | head -1 || true)
  if [ -n "$wheel" ]; then cp "$wheel" docker/wheels/; break; fi
done
if [ -z "${TORCH_VARIANT:-}" ]; then
  if ls docker/wheels/torch-*.whl > /dev/null 2>&1; then TORCH_VARIANT=wheel; else TORCH_VARIANT=cpu; fi
fi
find docker/certs -name '*.crt' -delete
cp /usr/local/share/ca-certificates/*.crt docker/certs/ 2> /dev/null || true

pids=()
if [ "${1:-}" = --standins ]; then  # in parallel with the worker image: apt and pip downloads overlap
  echo "build: prefcurate/postgres-standin:15, prefcurate/s3-standin:moto"
  build postgres-standin -f docker/standins/postgres.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t prefcurate/postgres-standin:15 . & pids+=($!)
  build s3-standin -f docker/standins/s3.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t prefcurate/s3-standin:moto . & pids+=($!)
fi
echo "build: $IMAGE (BASE_IMAGE=$BASE_IMAGE TORCH_VARIANT=$TORCH_VARIANT)"
status=0
build worker -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg TORCH_VARIANT="$TORCH_VARIANT" -t "$IMAGE" . || status=1
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
