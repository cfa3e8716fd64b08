#!/usr/bin/env bash
# Create .venv with the pinned dependencies and a project-local Flower home (.flwr/).
# Idempotent: a second run only checks. Needs no network beyond the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv (which flwr depends on anyway) installs the multi-GB torch stack in about 1 minute
# where pip takes 3 to 4. It gets pip's configured indexes and picks versions the way pip
# does (best match over all of them); pip stays the fallback.
.venv/bin/pip install -q "uv==0.12.24"
uv_args=(--index-strategy unsafe-best-match)
while IFS='=' read -r key value; do
  value=${value//\'/}
  case "$key" in
    *extra-index-url) for url in $value; do uv_args+=(--extra-index-url "$url"); done ;;
    *index-url) uv_args+=(--index-url "$value") ;;
    *find-links) for url in $value; do uv_args+=(--find-links "$url"); done ;;
  esac
done < <(.venv/bin/pip config list 2>/dev/null)
if ! .venv/bin/uv pip install --python .venv/bin/python -q --compile-bytecode "${uv_args[@]}" \
    -e ".[dev]"; then
  echo "setup: uv failed, installing with pip" >&2
  .venv/bin/pip install -q -e ".[dev]"
fi
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
