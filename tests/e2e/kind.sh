#!/usr/bin/env bash
# The kind suite (`make e2e`): what the operator manages, on a real cluster.
#
#   install with Helm → a Stoa reaches Ready → RealWorld requests through the ingress on
#   localhost → an image change whose migration gates the rollout (under load) → a failed
#   migration that holds the old image → a key rotation under load → a credential rotation
#   under load → a scale event → paused → an operator upgrade with two replicas → deletion
#   cleans up (database roles included).
#
# Every load runs signed-in and anonymous requests through the ingress and must see zero
# failed requests. Needs docker, kind, kubectl, helm and curl; where one is missing it
# prints one SKIP line and exits 0 (the development machines have no container runtime).
# Runs in GitHub Actions (.github/workflows/e2e.yml). KEEP_CLUSTER=1 keeps the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP e2e: $*"; exit 0; }
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
done
docker info >/dev/null 2>&1 || skip "no Docker engine is running"

CLUSTER=${CLUSTER:-stoa}
NS=stoa-demo                       # manifests/dev's namespace (PostgreSQL, Redis)
REGISTRY=ghcr.io/stoa-dev
TAG=e2e
API_IMAGE=$REGISTRY/stoa-api:$TAG
NEXT_IMAGE=$REGISTRY/stoa-api:$TAG-next      # the same build under another name: a new rollout
BROKEN_IMAGE=$REGISTRY/stoa-api:$TAG-broken  # its migration always fails
HOST=stoa.localtest.me
BASE=http://127.0.0.1:8080                   # kind-config.yaml maps the node's port 80 here
WORK=$(mktemp -d)

step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "FAIL: $*" >&2
  kubectl -n "$NS" get stoa,deploy,rs,pods,jobs -o wide >&2 || true
  kubectl -n "$NS" describe stoa demo 2>/dev/null | tail -40 >&2 || true
  kubectl -n stoa-system logs -l app.kubernetes.io/name=stoa-operator --tail=50 >&2 || true
  exit 1
}
cleanup() {
  # Nothing here may stop the trap before the cluster goes (errexit is off in it, and
  # every step tolerates failure).
  set +e
  for pid in "$WORK"/*.pid; do
    if [ -e "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
  done
  rm -rf "$WORK"
  if [ "${KEEP_CLUSTER:-0}" != 1 ] && [ "${CREATED_CLUSTER:-0}" = 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
# shellcheck source=tests/e2e/owned.sh
. tests/e2e/owned.sh

# Through the ingress, as a client would.
api() { curl -s --max-time 10 -H "Host: $HOST" "$@"; }
stoa() { kubectl -n "$NS" get stoa demo -o jsonpath="$1"; }
condition() {
  stoa "{.status.conditions[?(@.type==\"$1\")].status}/{.status.conditions[?(@.type==\"$1\")].reason}"
}
deployed_image() { kubectl -n "$NS" get deployment demo -o jsonpath='{.spec.template.spec.containers[0].image}'; }
# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every 2 s.
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${timeout}s waiting for $what"
    sleep 2
  done
}
equals() { [ "$1" = "$2" ]; }
differs() { [ "$1" != "$2" ]; }
# Conditions for wait_for.
stoa_is() { equals "$(stoa "$1")" "$2"; }                               # JSONPATH VALUE
stoa_moved_from() { local v; v=$(stoa "$1"); [ -n "$v" ] && differs "$v" "$2"; }  # JSONPATH OLD
replicas_are() { equals "$(kubectl -n "$NS" get deployment demo -o jsonpath='{.spec.replicas}')" "$1"; }
gone() { ! kubectl -n "$NS" get "$1" >/dev/null 2>&1; }                 # KIND/NAME
serving() { curl -fs --max-time 5 -H "Host: $HOST" "$BASE/readyz" >/dev/null; }
lease_holder() { kubectl -n stoa-system get lease stoa-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
leader_other_than() { local h; h=$(lease_holder); [ -n "$h" ] && differs "$h" "$1"; }
credentials_rotated_from() { stoa_moved_from '{.status.credentialRotation.role}' "$1" && stoa_is '{.status.credentialRotation.phase}' Idle; }

# load_start LABEL: one signed-in client (signs in again every 25 requests, so tokens from
# the current key are used) and anonymous reads, through the ingress, until load_stop.
load_start() {
  local label=$1 user="load$RANDOM$RANDOM"
  local out="$WORK/$label.codes"
  : >"$out"
  api -o /dev/null -X POST "$BASE/api/users" -H 'content-type: application/json' \
    -d "{\"user\":{\"username\":\"$user\",\"email\":\"$user@example.com\",\"password\":\"load-password-1\"}}"
  (
    token="" n=0
    while [ ! -e "$WORK/$label.stop" ]; do
      if [ $((n % 25)) -eq 0 ]; then
        body=$(api -X POST "$BASE/api/users/login" -H 'content-type: application/json' -w '\n%{http_code}' \
          -d "{\"user\":{\"email\":\"$user@example.com\",\"password\":\"load-password-1\"}}" || echo $'\n000')
        echo "${body##*$'\n'}" >>"$out"
        token=$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' <<<"${body%$'\n'*}")
      else
        api -o /dev/null -w '%{http_code}\n' -H "Authorization: Token $token" "$BASE/api/user" >>"$out" || echo 000 >>"$out"
        api -o /dev/null -w '%{http_code}\n' "$BASE/api/articles?limit=5" >>"$out" || echo 000 >>"$out"
      fi
      n=$((n + 1))
    done
  ) &
  echo $! >"$WORK/$label.pid"
}

# load_stop LABEL: fails unless every request of the load answered 2xx.
load_stop() {
  local label=$1 total failed
  touch "$WORK/$label.stop"
  wait "$(cat "$WORK/$label.pid")" || true
  rm -f "$WORK/$label.pid"
  total=$(wc -l <"$WORK/$label.codes")
  failed=$(grep -cv '^2' "$WORK/$label.codes" || true)
  echo "load during $label: $total requests, $failed failed"
  [ "$total" -ge 50 ] || fail "the load during $label made only $total requests"
  [ "$failed" -eq 0 ] || fail "$failed of $total requests failed during $label: $(grep -v '^2' "$WORK/$label.codes" | sort | uniq -c | tr '\n' ' ')"
}

step "cluster, images, ingress controller"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --config kind-config.yaml --name "$CLUSTER"
  CREATED_CLUSTER=1
fi
make images REGISTRY="$REGISTRY" TAG="$TAG"
docker tag "$API_IMAGE" "$NEXT_IMAGE"
docker tag "$REGISTRY/stoa-operator:$TAG" "$REGISTRY/stoa-operator:$TAG-next"
printf 'FROM busybox:1.36\nENTRYPOINT ["sh", "-c", "echo this image refuses to migrate >&2; exit 1"]\n' |
  docker build -q -t "$BROKEN_IMAGE" - >/dev/null
kind load docker-image --name "$CLUSTER" "$API_IMAGE" "$NEXT_IMAGE" "$BROKEN_IMAGE" \
  "$REGISTRY/stoa-operator:$TAG" "$REGISTRY/stoa-operator:$TAG-next"
# ingress-nginx's own kind provider at a fixed release: it pins the controller to the node
# labelled ingress-ready=true, the one whose port 80 kind-config.yaml maps (with worker
# nodes it could otherwise land where nothing is mapped).
INGRESS_NGINX=controller-v1.12.1
kubectl apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/$INGRESS_NGINX/deploy/static/provider/kind/deploy.yaml"
kubectl -n ingress-nginx wait --for=condition=Available deployment/ingress-nginx-controller --timeout=300s

step "install the operator with Helm (two replicas, leader election)"
helm upgrade --install stoa-operator helm/stoa-operator -n stoa-system --create-namespace \
  --set watchNamespace="$NS" \
  --set image.repository="$REGISTRY/stoa-operator" --set image.tag="$TAG" \
  --set image.pullPolicy=Never --set replicaCount=2 --wait --timeout 5m
wait_for "an operator leader" 60 leader_other_than ""

step "a Stoa reaches Ready"
kubectl apply -k manifests/dev
kubectl -n "$NS" rollout status statefulset/postgres --timeout=300s
kubectl -n "$NS" rollout status deployment/redis --timeout=180s
kubectl -n "$NS" get secret demo-db -o jsonpath='{.data.url}' | base64 -d >"$WORK/db-url"
kubectl -n "$NS" create secret generic demo-db-admin --from-file=url="$WORK/db-url" \
  --dry-run=client -o yaml | kubectl apply -f -
cat >"$WORK/stoa.yaml" <<EOF
apiVersion: stoa.dev/v1alpha1
kind: Stoa
metadata: {name: demo, namespace: $NS}
spec:
  image: $API_IMAGE
  replicas: 2
  database:
    urlSecretRef: {name: demo-db}
    adminSecretRef: {name: demo-db-admin}
  redis: {urlSecretRef: {name: demo-redis}}
  ingress: {host: $HOST, className: nginx}
  env:
    # Every request of the suite comes from one address.
    - {name: STOA_RATE_LIMIT_ENABLED, value: "false"}
EOF
kubectl apply -f "$WORK/stoa.yaml"
# What the Stoa owns, named by the operator's own builders (the image's `render`).
OWNED=$(docker run --rm -i "$REGISTRY/stoa-operator:$TAG" render -f - <"$WORK/stoa.yaml" | owned_objects)
[ -n "$OWNED" ] || fail "stoa-operator render named no objects"
kubectl -n "$NS" wait stoa/demo --for=condition=Ready --timeout=300s
kubectl -n "$NS" get stoa demo
for object in $OWNED; do
  owner=$(kubectl -n "$NS" get "$object" -o jsonpath='{.metadata.ownerReferences[0].kind}' 2>/dev/null || true)
  equals "$owner" Stoa || fail "$object is missing or not owned by the Stoa"
done

step "RealWorld requests through the ingress on localhost"
wait_for "the API through the ingress" 120 serving
status=$(api -o "$WORK/user.json" -w '%{http_code}' -X POST "$BASE/api/users" -H 'content-type: application/json' \
  -d '{"user":{"username":"e2e","email":"e2e@example.com","password":"e2e-password"}}')
equals "$status" 201 || fail "register answered $status: $(cat "$WORK/user.json")"
token=$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$WORK/user.json")
status=$(api -o /dev/null -w '%{http_code}' -X POST "$BASE/api/articles" -H 'content-type: application/json' \
  -H "Authorization: Token $token" \
  -d '{"article":{"title":"Through the ingress","description":"e2e","body":"It works.","tagList":["e2e"]}}')
equals "$status" 201 || fail "create article answered $status"
api "$BASE/api/articles?tag=e2e" | grep -q '"slug":"through-the-ingress"' || fail "the article is not listed"
api "$BASE/.well-known/jwks.json" | grep -q '"kty":"OKP"' || fail "no JWKS"

step "an image change: the migration gates the rollout (under load)"
load_start rollout
old_image=$(deployed_image)
kubectl -n "$NS" patch stoa demo --type merge -p "{\"spec\":{\"image\":\"$NEXT_IMAGE\"}}"
wait_for "the migration Job" 60 stoa_is '{.status.migration.image}' "$NEXT_IMAGE"
job=$(stoa '{.status.migration.job}')
deadline=$((SECONDS + 300))
until equals "$(stoa '{.status.approvedImage}')" "$NEXT_IMAGE"; do
  [ "$SECONDS" -lt "$deadline" ] || fail "timed out after 300s waiting for $NEXT_IMAGE to be approved"
  succeeded=$(kubectl -n "$NS" get job "$job" -o jsonpath='{.status.succeeded}' 2>/dev/null || true)
  if equals "$(deployed_image)" "$NEXT_IMAGE" && differs "$succeeded" 1; then
    fail "the Deployment got $NEXT_IMAGE before its migration Job $job succeeded"
  fi
  sleep 1
done
equals "$(kubectl -n "$NS" get job "$job" -o jsonpath='{.status.succeeded}')" 1 || fail "approved without a successful Job"
kubectl -n "$NS" rollout status deployment/demo --timeout=300s
equals "$(deployed_image)" "$NEXT_IMAGE" || fail "the Deployment runs $(deployed_image), not $NEXT_IMAGE (was $old_image)"
kubectl -n "$NS" rollout status deployment/demo-worker --timeout=300s
worker_image=$(kubectl -n "$NS" get deployment demo-worker -o jsonpath='{.spec.template.spec.containers[0].image}')
equals "$worker_image" "$NEXT_IMAGE" || fail "the workers run $worker_image, not $NEXT_IMAGE"
sleep 10
load_stop rollout

step "a failed migration holds the old image"
kubectl -n "$NS" patch stoa demo --type merge -p "{\"spec\":{\"image\":\"$BROKEN_IMAGE\"}}"
wait_for "Degraded/MigrationFailed" 300 stoa_is '{.status.conditions[?(@.type=="Degraded")].reason}' MigrationFailed
equals "$(deployed_image)" "$NEXT_IMAGE" || fail "a failed migration let $(deployed_image) roll out"
api -f -o /dev/null "$BASE/api/articles" || fail "the API stopped serving during a failed migration"
kubectl -n "$NS" patch stoa demo --type merge -p "{\"spec\":{\"image\":\"$NEXT_IMAGE\"}}"
wait_for "Degraded to clear" 120 stoa_is '{.status.conditions[?(@.type=="Degraded")].status}' False

step "a signing-key rotation under load"
old_kid=$(stoa '{.status.keyRotation.activeKid}')
load_start keys
kubectl -n "$NS" annotate stoa demo stoa.dev/rotate-keys=e2e-1 --overwrite
wait_for "the new key to be confirmed by every pod and promoted" 420 \
  stoa_moved_from '{.status.keyRotation.activeKid}' "$old_kid"
sleep 20   # tokens signed by the new key reach every pod
load_stop keys

step "a database credential rotation under load"
wait_for "the first credential rotation to settle" 420 stoa_is '{.status.credentialRotation.phase}' Idle
old_role=$(stoa '{.status.credentialRotation.role}')
load_start credentials
kubectl -n "$NS" annotate stoa demo stoa.dev/rotate-credentials=e2e-1 --overwrite
wait_for "the pods to move to the other role and the old one to expire" 600 credentials_rotated_from "$old_role"
load_stop credentials

step "a scale event (the Stoa's scale subresource)"
kubectl -n "$NS" scale stoa demo --replicas 3
wait_for "3 ready replicas" 180 stoa_is '{.status.readyReplicas}' 3

step "paused: nothing changes until unpaused"
kubectl -n "$NS" patch stoa demo --type merge -p '{"spec":{"paused":true,"replicas":2}}'
wait_for "Paused=True" 60 stoa_is '{.status.conditions[?(@.type=="Paused")].status}' True
sleep 10
replicas_are 3 || fail "a paused Stoa changed its Deployment"
kubectl -n "$NS" patch stoa demo --type merge -p '{"spec":{"paused":false}}'
wait_for "the Deployment to follow once unpaused" 60 replicas_are 2

step "an operator upgrade with two replicas"
old_holder=$(lease_holder)
helm upgrade stoa-operator helm/stoa-operator -n stoa-system --reuse-values \
  --set image.tag="$TAG-next" --wait --timeout 5m
kubectl -n stoa-system rollout status deployment/stoa-operator --timeout=300s
wait_for "a new leader" 120 leader_other_than "$old_holder"
kubectl -n "$NS" scale stoa demo --replicas 3
wait_for "the upgraded operator to reconcile" 120 replicas_are 3

step "deletion cleans up, database roles included"
kubectl -n "$NS" delete stoa demo --timeout=300s
for object in $OWNED; do
  wait_for "$object to be collected" 120 gone "$object"
done
roles=$(kubectl -n "$NS" exec statefulset/postgres -- psql -U postgres -tAc "select count(*) from pg_roles where rolname like 'stoa\\_%'")
equals "$roles" 0 || fail "$roles database roles of the Stoa remain"

echo
echo "e2e passed"
