#!/usr/bin/env bash
# End-to-end on kind: builds both images, installs the operator, PostgreSQL and Redis,
# applies the example Stoa, waits for Ready, and drives the API through a port-forward.
# Needs docker, kind, kubectl and curl; skips (exit 0) with a message where they are missing.
# Not run by .ci/run (the development machines have no container runtime); see
# .github/workflows/e2e.yml.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in docker kind kubectl curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP e2e: $tool is not installed"; exit 0
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "SKIP e2e: no Docker engine is running"; exit 0
fi

CLUSTER=${CLUSTER:-stoa}
TAG=0.1.0
API_IMAGE=ghcr.io/stoa-dev/stoa-api:$TAG
OPERATOR_IMAGE=ghcr.io/stoa-dev/stoa-operator:$TAG

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config kind-config.yaml --name "$CLUSTER"
docker build --target stoa-api -t "$API_IMAGE" .
docker build --target stoa-operator -t "$OPERATOR_IMAGE" .
kind load docker-image --name "$CLUSTER" "$API_IMAGE" "$OPERATOR_IMAGE"

kubectl apply -k manifests/operator
kubectl -n stoa-system rollout status deployment/stoa-operator --timeout=180s
kubectl apply -k manifests/dev
kubectl -n stoa-demo rollout status statefulset/postgres --timeout=300s
kubectl -n stoa-demo rollout status deployment/redis --timeout=180s
kubectl apply -k manifests/example

echo "waiting for the Stoa to be Ready"
kubectl -n stoa-demo wait stoa/demo --for=condition=Ready --timeout=300s
kubectl -n stoa-demo get stoa demo

# Owned objects exist and carry the Stoa as owner.
for kind in deployment service configmap secret serviceaccount poddisruptionbudget; do
  owner=$(kubectl -n stoa-demo get "$kind" -l app.kubernetes.io/instance=demo -o jsonpath='{.items[0].metadata.ownerReferences[0].kind}')
  [ "$owner" = "Stoa" ] || { echo "FAIL: $kind not owned by the Stoa"; exit 1; }
done

kubectl -n stoa-demo port-forward service/demo 18080:80 >/dev/null 2>&1 &
PF=$!
trap 'kill $PF 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do curl -fs localhost:18080/readyz >/dev/null && break; sleep 1; done
curl -fs localhost:18080/readyz
status=$(curl -s -o /dev/null -w '%{http_code}' localhost:18080/api/users -H 'content-type: application/json' \
  -d '{"user":{"username":"e2e","email":"e2e@example.com","password":"e2e-password"}}')
[ "$status" = 201 ] || [ "$status" = 422 ] || { echo "FAIL: register answered $status"; exit 1; }
curl -fs localhost:18080/api/articles >/dev/null
curl -fs localhost:18080/.well-known/jwks.json | grep -q '"kty":"OKP"'

# Pausing freezes the Deployment; a spec change rolls it once unpaused.
kubectl -n stoa-demo patch stoa demo --type merge -p '{"spec":{"paused":true,"replicas":3}}'
sleep 5
[ "$(kubectl -n stoa-demo get deployment demo -o jsonpath='{.spec.replicas}')" = 2 ] || { echo "FAIL: paused Stoa changed"; exit 1; }
kubectl -n stoa-demo patch stoa demo --type merge -p '{"spec":{"paused":false}}'
kubectl -n stoa-demo wait deployment/demo --for=jsonpath='{.spec.replicas}'=3 --timeout=60s

echo "e2e passed"
