# The one task runner: CI calls `make setup` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help setup build lint test bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: ## install the tools tests need (docker-registry, skopeo, ...); quiet when done
	@scripts/setup.sh

build: ## build every crate
	$(CARGO) build --workspace --all-targets

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: setup lint ## fmt, clippy and every test (unit, real registries, skopeo)
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --all-targets 2>&1 | tee target/test.log
	@scripts/summarise-tests.sh target/test.log

bench: setup ## ecr-replicator vs skopeo vs raw curl upload, on local registries
	$(CARGO) build --release -p ecr-replicator -p e2e --bins
	target/release/bench

clean:
	$(CARGO) clean

.PHONY: demo
demo: setup ## the real state machine on moto + cargo lambda watch, sample images, skopeo checks
	$(CARGO) build -q -p e2e --bin demo
	target/debug/demo
