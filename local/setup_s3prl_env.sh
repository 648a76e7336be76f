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

# torch's CUDA wheels: ~3.6 GB downloaded into a temporary dir, ~7.2 GB installed. Say so up front
# rather than let pip die half-way with ENOSPC (an unhandled exception, exit 2, in its resolver).
need_gb=${S3PRL_ENV_NEED_GB:-12}
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
if [ ! -f "${stamp}" ]; then
  for dir in . "${TMPDIR:-/tmp}"; do
    if [ "$(free_gb "${dir}")" -lt "${need_gb}" ]; then
      log "error: ${venv} needs about ${need_gb} GB free for torch's wheels; $(readlink -f "${dir}") has" \
          "$(free_gb "${dir}") GB. Free some space (or point TMPDIR elsewhere) and rerun."
      exit 1
    fi
  done
fi

[ -x "${venv}/bin/python" ] || { log "creating ${venv}"; "${python}" -m venv "${venv}"; }
echo '*' > "${venv}/.gitignore"  # as Python >= 3.13's venv does: git ignores the whole folder
# No pip cache: it would hold a second copy of every wheel. Output to setup.log as well, for CI.
pip="${venv}/bin/python -m pip --disable-pip-version-check --no-cache-dir"
setup_log=${venv}/setup.log
log "pip step 1/2: requirements-s3prl.txt, wheels only (log: ${setup_log})"
# A dropped connection half-way through a 900 MB wheel is not retried by pip itself.
for attempt in 1 2 3; do
  if ${pip} install -q --only-binary :all: -r requirements-s3prl.txt 2>&1 | tee -a "${setup_log}"; then
    break
  fi
  log "pip failed (attempt ${attempt} of 3): $(tail -n 1 "${setup_log}")"
  [ "${attempt}" -lt 3 ] || exit 1
  sleep 10
done
${pip} check
log "pip step 2/2: requirements-s3prl-source.txt, S3PRL's sdist checked by sha256, into ${venv}/src"
${pip} download -q --require-hashes --no-deps --no-binary :all: --no-build-isolation -d "${venv}/src" \
  -r requirements-s3prl-source.txt
echo "${want}" > "${stamp}"
log "environment ready in ${venv}"
