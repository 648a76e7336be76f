#!/usr/bin/env bash
# Create or reuse .venv-s3prl: the environment in which S3PRL's own runner (run_downstream.py)
# runs for SUPERB on real data (local/superb/s3prl_runner.py calls this first). A second
# environment because S3PRL's runner and datasets need what .venv has moved past
# (requirements-s3prl.txt says what and why). A run with nothing changed takes milliseconds.
#
# Two pip steps: requirements-s3prl.txt from wheels only; then S3PRL's 0.4.10 sdist, downloaded in
# hash-checking mode (requirements-s3prl-source.txt) and kept, not installed, under
# .venv-s3prl/src/ for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (setup_s3prl_env) $*" >&2; }

python=${PYTHON:-python3}
venv=.venv-s3prl
stamp=${venv}/.requirements.sha256
want=$(sha256sum requirements-s3prl.txt requirements-s3prl-source.txt | sha256sum | cut -d' ' -f1)
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
  exit 0
fi

[ -x "${venv}/bin/python" ] || { log "creating ${venv}"; "${python}" -m venv "${venv}"; }
echo '*' > "${venv}/.gitignore"  # as Python >= 3.13's venv does: git ignores the whole folder
pip="${venv}/bin/python -m pip --disable-pip-version-check"
log "pip step 1/2: requirements-s3prl.txt, wheels only"
${pip} install -q --only-binary :all: -r requirements-s3prl.txt
${pip} check
log "pip step 2/2: requirements-s3prl-source.txt, S3PRL's sdist checked by sha256, into ${venv}/src"
${pip} download -q --require-hashes --no-deps --no-binary :all: --no-build-isolation -d "${venv}/src" \
  -r requirements-s3prl-source.txt
echo "${want}" > "${stamp}"
log "environment ready in ${venv}"
