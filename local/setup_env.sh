#!/usr/bin/env bash
# Create or reuse the project's environment: Debian packages (only when missing) and a
# project-local virtualenv from requirements.txt. A second run with nothing changed takes seconds.
#
# Two pip steps, because fairseq compiles C++/Cython extensions against the torch it finds:
# step 1 installs torch and the build tools; step 2 builds the rest with --no-build-isolation,
# so fairseq links against our torch and not against the newest one PyPI offers.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (setup_env) $*" >&2; }

apt_packages="espeak-ng sox libsndfile1"
missing=""
command -v espeak-ng >/dev/null || missing="espeak-ng"
command -v sox >/dev/null || missing="${missing} sox"
ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || missing="${missing} libsndfile1"
if [ -n "${missing}" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: ${apt_packages}"
  ${sudo} apt-get update -qq
  DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq ${apt_packages} >/dev/null
fi

python=${PYTHON:-python3}
venv=.venv
stamp=${venv}/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
  exit 0
fi

[ -x "${venv}/bin/python" ] || { log "creating ${venv}"; "${python}" -m venv "${venv}"; }
pip="${venv}/bin/python -m pip --disable-pip-version-check"
build_reqs=$(grep -E '^(pip|torch|torchaudio|numpy|Cython|setuptools|wheel)==' requirements.txt)
torch_pins=$(grep -E '^(torch|torchaudio)==' requirements.txt)
log "pip step 1/2: ${build_reqs//$'\n'/ }"
# shellcheck disable=SC2086
${pip} install -q ${build_reqs}
log "pip step 2/2: requirements.txt (fairseq builds its extensions here)"
# torch is pinned again so no package can pull another torch in beside it.
# shellcheck disable=SC2086
${pip} install -q --no-build-isolation ${torch_pins} -r requirements.txt
${pip} check
echo "${want}" > "${stamp}"
log "environment ready in ${venv}"
