#!/usr/bin/env bash
# Installs every tool the tests, the demo and the bench need on a fresh Debian machine.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# jq and openssl: the air-gap chapter's statement check, run as written by a cli test.
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)

if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} (apt)"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The distribution registry from Debian must not run as a system service on the default port:
# the tests start their own instances on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

# moto (ECR and STS control planes for the tests and the demo), in a project-local venv.
MOTO_VERSION=5.2.5
if ! .venv/bin/python -c "import moto, flask" >/dev/null 2>&1 || [ "$(.venv/bin/python -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$MOTO_VERSION" ]; then
  echo "setup: installing moto[server]==$MOTO_VERSION into .venv (pip)"
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# cargo-lambda (serves the real Lambda binaries for the local state machine runs), same venv.
CARGO_LAMBDA_VERSION=1.9.2
if [ "$(.venv/bin/pip show cargo-lambda 2>/dev/null | awk '/^Version:/ {print $2}')" != "$CARGO_LAMBDA_VERSION" ]; then
  echo "setup: installing cargo-lambda==$CARGO_LAMBDA_VERSION into .venv (pip)"
  .venv/bin/pip install -q --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi

# cfn-lint for the synthesized CloudFormation templates, same venv.
CFN_LINT_VERSION=1.58.0
if [ "$(.venv/bin/pip show cfn-lint 2>/dev/null | awk '/^Version:/ {print $2}')" != "$CFN_LINT_VERSION" ]; then
  echo "setup: installing cfn-lint==$CFN_LINT_VERSION into .venv (pip)"
  .venv/bin/pip install -q --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
fi

# The CDK app's dependencies (aws-cdk-lib, aws-cdk CLI, cdk-nag, typescript; pinned in the lock file).
if [ ! -x cdk/node_modules/.bin/cdk ] || [ ! -x cdk/node_modules/.bin/tsc ] || [ ! -f cdk/node_modules/ajv/dist/2020.js ]; then
  command -v npm >/dev/null 2>&1 || { echo "setup: npm not found; install Node.js (Debian: nodejs npm)" >&2; exit 1; }
  echo "setup: installing the CDK app's dependencies (npm)"
  npm ci --prefix cdk --no-audit --no-fund --loglevel=error >/dev/null
fi

# ASL validators for the state machine checks (npm; versions pinned in the lock file).
if [ ! -x statemachine/node_modules/.bin/asl-validator ] || [ ! -x statemachine/node_modules/.bin/statelint ]; then
  command -v npm >/dev/null 2>&1 || { echo "setup: npm not found; install Node.js (Debian: nodejs npm)" >&2; exit 1; }
  echo "setup: installing asl-validator and @wmfs/statelint (npm)"
  npm ci --prefix statemachine --no-audit --no-fund --loglevel=error >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
