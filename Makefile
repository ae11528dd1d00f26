# The one task runner: CI calls `make setup` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
# The Lambda functions' binaries (crates/functions/src/bin), built with --workspace so their
# dependencies have the features of `cargo test --workspace` (the same artifacts, not a second set).
FUNCTION_BINS := $(patsubst crates/functions/src/bin/%.rs,--bin %,$(wildcard crates/functions/src/bin/*.rs))

.PHONY: help setup build lint test cdk-test package deploy bench bench-scale clean docs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: ## install the tools tests need (docker-registry, skopeo, ...); quiet when done
	@scripts/setup.sh

build: ## build every crate
	$(CARGO) build --workspace --all-targets

lint: ## rustfmt check and clippy with warnings as errors
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: ## fmt, clippy, the CDK checks and every test (real registries, moto, state machine)
	@mkdir -p target
	@$(MAKE) --no-print-directory -j2 tools-and-cdk lint-and-build
	@scripts/check-disk.sh
	@$(MAKE) --no-print-directory -j2 tests-but-crash crash-test
	@cat target/tests.log target/crash-test.log >> target/test.log
	@scripts/summarise-tests.sh target/test.log

# make test's two lanes, side by side: the tools install and the CDK checks (node, npm, pip: mostly
# one core, much of it waiting) run while cargo checks and compiles (both cores). The tests start
# once both are done: the rig reads the templates cdk-test synthesizes.
.PHONY: tools-and-cdk lint-and-build
tools-and-cdk: setup
	@set -o pipefail; $(MAKE) --no-print-directory cdk-test > target/test.log 2>&1 || { cat target/test.log; exit 1; }
	@cat target/test.log
lint-and-build: lint
	# --tests: every library's unit tests and every integration test; the binaries' empty test
	# harnesses (test = false in their manifests) are not built or linked. clippy above checks them.
	$(CARGO) test --workspace --tests --no-run
	# The functions the state machine tests serve (the rig builds them itself when they are missing).
	$(CARGO) build --workspace $(FUNCTION_BINS)

# The tests in two lanes, built above: the command line's crash test (two minutes of copy steps
# killed and resumed, mostly waiting) beside every other test. Same features and artifacts
# (--workspace), so nothing is compiled again.
.PHONY: tests-but-crash crash-test
tests-but-crash:
	set -o pipefail; $(CARGO) test --workspace --tests -- --skip crash:: 2>&1 | tee target/tests.log
crash-test:
	@set -o pipefail; $(CARGO) test --workspace --test cli crash:: > target/crash-test.log 2>&1; rc=$$?; cat target/crash-test.log; exit $$rc

CDK_ENV := CDK_DISABLE_VERSION_CHECK=1 CDK_CLI_TELEMETRY=false
cdk-test: ## CDK: compile, assertion tests (cdk-nag included), offline synth, cfn-lint
	cd cdk && rm -rf dist cdk.out && npx tsc && node --test dist/test/
	cd cdk && $(CDK_ENV) npx cdk synth --quiet --no-notices --no-version-reporting -c ecrReplicator:allowPlaceholderCode=true -c ecrReplicator:configFile=config.example.json
	# No configuration, no synth: the message says how to make one (cdk.json names no default).
	cd cdk && if out=$$($(CDK_ENV) npx cdk synth --quiet --no-notices --no-version-reporting -o cdk.out.none 2>&1); then echo "synth without a configuration succeeded" >&2; exit 1; else echo "$$out" | grep -q 'No deployment configuration'; fi
	# The deployment the IAM check runs against: the local test accounts (cdk/test/config.iam.json).
	cd cdk && rm -rf cdk.out.iam && $(CDK_ENV) npx cdk synth --quiet --no-notices --no-version-reporting -o cdk.out.iam -c ecrReplicator:allowPlaceholderCode=true -c ecrReplicator:configFile=test/config.iam.json
	# A China deployment (cdk/test/config.cn.json: KMS keys, a schedule, a cross-account source):
	# nothing it synthesizes may name the aws partition, and its schedule carries the key mapping.
	cd cdk && rm -rf cdk.out.cn && $(CDK_ENV) npx cdk synth --quiet --no-notices --no-version-reporting -o cdk.out.cn -c ecrReplicator:allowPlaceholderCode=true -c ecrReplicator:configFile=test/config.cn.json
	! grep -l 'arn:aws:' cdk/cdk.out.cn/*.template.json
	grep -q 'kmsKeyMapping' cdk/cdk.out.cn/EcrReplicatorWorkflow.template.json
	# W3005: CDK adds DependsOn on a role that a GetAtt already implies; harmless.
	.venv/bin/cfn-lint --ignore-checks W3005 -- cdk/cdk.out/*.template.json

package: setup ## build the Lambda binaries for arm64 (cargo-lambda + ziglang) into target/lambda/
	.venv/bin/pip install -q --disable-pip-version-check ziglang
	rustup target add aarch64-unknown-linux-gnu
	PATH="$(CURDIR)/.venv/bin:$$PATH" cargo-lambda lambda build --release --arm64 -p functions

deploy: package ## deploy with cdk: the workflow stack first (the other stacks' roles trust its roles), then the rest; CDK_ARGS for the config
	cd cdk && npm ci --no-audit --no-fund && $(CDK_ENV) npx cdk deploy 'EcrReplicator*Workflow' --no-notices $(CDK_ARGS)
	cd cdk && $(CDK_ENV) npx cdk deploy --all --no-notices $(CDK_ARGS)

bench: setup ## ecr-replicator vs skopeo vs raw curl upload, on local registries
	$(CARGO) build --release -p ecr-replicator -p e2e --bins
	target/release/bench

bench-scale: setup ## 10,000 repositories x 10 tags: dry run and no-op through the CLI and the state machine
	$(CARGO) build --release -p ecr-replicator -p e2e --bins
	# The state machine's functions run from the debug build (target/debug/<function>).
	$(CARGO) build --workspace $(FUNCTION_BINS)
	target/release/scale

clean:
	$(CARGO) clean

.PHONY: fuzz
fuzz: ## cargo fuzz (nightly): manifest, reference, WWW-Authenticate, job input; FUZZ_SECONDS each (60)
	@scripts/fuzz.sh

.PHONY: demo
demo: setup ## the real state machine on moto + the real functions, sample images, skopeo checks
	$(CARGO) build -q --workspace --bin demo $(FUNCTION_BINS)
	target/debug/demo

# The guide (docs/, mdBook). Its tools are pinned and installed once into .tools/ (not on the
# PATH of anything else); the build itself is offline. Not part of `make test`.
# mdbook-mermaid 0.17 is the series for mdbook 0.5 (0.16 and older take mdbook 0.4); its warning
# that it was built against mdbook 0.5.0 is harmless within the series.
MDBOOK_VERSION := 0.5.4
MDBOOK_MERMAID_VERSION := 0.17.1
TOOLS := $(CURDIR)/.tools
docs: ## the guide (docs/) as a book into target/book; installs mdbook and mdbook-mermaid into .tools/ once
	@if [ "$$($(TOOLS)/bin/mdbook --version 2>/dev/null)" != "mdbook v$(MDBOOK_VERSION)" ] \
	  || [ "$$($(TOOLS)/bin/mdbook-mermaid --version 2>/dev/null)" != "mdbook-mermaid $(MDBOOK_MERMAID_VERSION)" ]; then \
	  $(CARGO) install --locked --root $(TOOLS) mdbook@$(MDBOOK_VERSION) mdbook-mermaid@$(MDBOOK_MERMAID_VERSION); \
	fi
	@test -f docs/mermaid.min.js -a -f docs/mermaid-init.js || $(TOOLS)/bin/mdbook-mermaid install docs
	PATH="$(TOOLS)/bin:$$PATH" mdbook build docs
	@echo "the guide: target/book/index.html"
