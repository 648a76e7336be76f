# Environment for the recipe and the tests, like an ESPnet path.sh: source it, don't run it.
# local/setup_env.sh creates what it activates.
MAIN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MAIN_ROOT
# shellcheck disable=SC1091
. "${MAIN_ROOT}/.venv/bin/activate"
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
export LC_ALL=C
# Offline: never let a library try to reach a model hub.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
