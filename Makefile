# The two commands: `make run` (the service, locally) and `make test` (every test).
CARGO ?= cargo
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export DATABASE_URL

.PHONY: run test lint fmt services bench startup-order bench-worker console-timings crds validate fuzz monitoring images e2e docs coverage

services:
	@scripts/ensure-services.sh

## Run stoa-api locally: dev key set, database `stoa_dev` created and migrated, readable logs.
## `make run DEMO=1` first loads the demo data set (`stoa-api seed`) into an empty stoa_dev.
run: services
ifneq ($(DEMO),)
	$(CARGO) run -p stoa-api -- seed --dev --if-empty
endif
	@echo "The book (how to use, run and operate Stoa): make docs, then target/book/html/index.html"
	$(CARGO) run -p stoa-api -- serve --dev

## Run the whole test suite (unit, integration over HTTP with real PostgreSQL and Redis).
test: services
	@scripts/ensure-services.sh --with-test-tools
	$(CARGO) test --workspace

## The book (docs/): references regenerated from the code, built into target/book/html
## with every internal link checked.
docs:
	scripts/docs.sh

## Line coverage per crate of the whole test suite (cargo-tarpaulin), into target/coverage-report.
coverage: services
	@scripts/ensure-services.sh --with-test-tools
	scripts/coverage.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Validate the CRDs, the Helm chart (two value sets), the kustomize output and the
## operator's rendered objects against the official Kubernetes schemas.
validate:
	python3 -m pip install -q --disable-pip-version-check kubernetes-validate helm-python-sdk jsonschema pyyaml
	python3 scripts/validate-manifests.py
	python3 scripts/monitoring.py --check

## Regenerate the dashboard JSON and the plain monitoring manifests (manifests/monitoring)
## from scripts/monitoring.py and the Helm chart's files/rules.yaml.
monitoring:
	python3 -m pip install -q --disable-pip-version-check helm-python-sdk pyyaml
	python3 scripts/monitoring.py

## Contract fuzzing: schemathesis against the served OpenAPI document (after `make test`).
fuzz: services
	scripts/contract-fuzz.sh

## Load harness against a release build on a scratch database (see README, "Benchmarks").
bench: services
	scripts/bench.sh

## Regenerate api-server/startup-order.txt, the start-up code's link order, from a release
## build (after a toolchain or dependency update; `make bench` says when it no longer matches).
startup-order: services
	scripts/startup-order.sh

## Worker throughput: 5000 account exports drained by one worker (scripts/bench-worker.sh)
bench-worker: services
	scripts/bench-worker.sh

## The admin console's page timings on the bench data (scripts/console-timings.sh)
console-timings: services
	scripts/console-timings.sh

## Regenerate the CRD YAML (crds/, the kustomize base, and the Helm chart's CRD template)
## from the Rust types.
crds:
	$(CARGO) run -q -p stoa-operator -- crd > crds/stoa.dev_stoas.yaml
	cp crds/stoa.dev_stoas.yaml manifests/operator/crds/stoa.dev_stoas.yaml
	$(CARGO) run -q -p stoa-operator -- crd --helm > helm/stoa-operator/templates/crd.yaml

## Container images of both programs, reproducibly: the same commit gives the same image
## (timestamps from the commit, paths remapped, layer times rewritten; needs Docker with
## BuildKit >= 0.13). TAG defaults to the workspace version.
REGISTRY ?= ghcr.io/stoa-dev
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# BuildKit's rewrite-timestamp needs an exporter that writes the image itself: with the
# default `docker` driver it is refused (containerd image store) or silently dropped
# (classic store). A docker-container builder exports a tarball that `type=docker` loads.
BUILDER ?= stoa-builder
images:
	@command -v docker >/dev/null 2>&1 || { echo "make images: docker is not installed"; exit 1; }
	docker buildx inspect $(BUILDER) >/dev/null 2>&1 || \
	  docker buildx create --name $(BUILDER) --driver docker-container >/dev/null
	for target in stoa-api stoa-operator; do \
	  docker buildx build --builder $(BUILDER) --target $$target \
	    --build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
	    --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) \
	    --build-arg CREATED=$$(date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ) \
	    --output type=docker,name=$(REGISTRY)/$$target:$(TAG),rewrite-timestamp=true \
	    . || exit 1; \
	done

## The kind suite (tests/e2e/kind.sh): every lifecycle protocol on a real cluster. Skips
## with one line where Docker or kind is missing.
e2e:
	tests/e2e/kind.sh
