#!/usr/bin/env bash
# Create .venv with the pinned dependencies and a project-local Flower home (.flwr/).
# Idempotent: a second run only checks. Needs no network beyond the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e ".[dev]"
# Flower 1.41 keeps SuperLink connections in $FLWR_HOME/config.toml; ours lives in .flwr/
# (git-ignored) so no tracked file is rewritten and ~/.flwr is left alone.
mkdir -p .flwr
if [ ! -f .flwr/config.toml ]; then
  cat > .flwr/config.toml <<'TOML'
[superlink]
default = "local"

[superlink.local]
address = ":local:"

[superlink.local-simulation]
address = ":local:"
options.num-supernodes = 4

[superlink.local-deployment]
address = "127.0.0.1:8000"
insecure = true
TOML
fi
echo "setup done: .venv and .flwr/config.toml ready"
