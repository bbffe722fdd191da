#!/usr/bin/env bash
# Build (and with --push, push) pdfusion's GPU and CPU images with the versions pinned in
# infra/versions.env. Usage: infra/docker/build.sh [--push] [gpu|cpu ...]   (default: gpu cpu)
# The image name comes from versions.env; override with PDFUSION_IMAGE=registry/name.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
set -a
# shellcheck source=../versions.env
. "$ROOT/infra/versions.env"
set +a
PUSH=0
FLAVOURS=()
for arg in "$@"; do
  case "$arg" in
    --push) PUSH=1 ;;
    gpu|cpu) FLAVOURS+=("$arg") ;;
    *) echo "build.sh: unknown argument '$arg' (use --push, gpu, cpu)" >&2; exit 2 ;;
  esac
done
[ ${#FLAVOURS[@]} -eq 0 ] && FLAVOURS=(gpu cpu)
for flavour in "${FLAVOURS[@]}"; do
  if [ "$flavour" = gpu ]; then index="$TORCH_CUDA_INDEX_URL"; else index="$TORCH_CPU_INDEX_URL"; fi
  tag="${PDFUSION_IMAGE}:${PDFUSION_VERSION}-ray${RAY_VERSION}-${flavour}"
  docker build -f "$ROOT/infra/docker/Dockerfile.$flavour" \
    --build-arg "RAY_VERSION=$RAY_VERSION" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --build-arg "TORCH_INDEX_URL=$index" \
    -t "$tag" "$ROOT"
  echo "built $tag"
  if [ "$PUSH" = 1 ]; then docker push "$tag"; fi
done
