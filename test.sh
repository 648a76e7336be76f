#!/usr/bin/env bash
# Run the test suite: sets up (or reuses) the environment, then pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./local/setup_env.sh
. ./path.sh
exec python -m pytest "$@"
