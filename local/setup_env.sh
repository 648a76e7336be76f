#!/usr/bin/env bash
# Create or reuse the project's environment: Debian packages (only when missing) and a
# project-local virtualenv from requirements.txt. A second run with nothing changed takes seconds.
#
# Three pip steps. Step 1 installs torch and the build tools from requirements.txt. Step 2
# builds what has no wheel here (requirements-source.txt: fairseq-fixed and a few dependencies)
# from sdists whose sha256 is pinned, in pip's hash-checking mode, with --no-build-isolation so
# fairseq compiles its C++/Cython extensions against our torch and not the newest one PyPI
# offers. Step 3 installs the rest of requirements.txt from wheels only, so nothing that step 2
# did not check gets built from source.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (setup_env) $*" >&2; }

apt_packages="espeak-ng sox libsndfile1 sctk"
missing=""
command -v espeak-ng >/dev/null || missing="espeak-ng"
command -v sox >/dev/null || missing="${missing} sox"
ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || missing="${missing} libsndfile1"
# sctk: NIST's sclite, which scores stage 4 as ESPnet does; Debian keeps it in /usr/lib/sctk/bin.
command -v sclite >/dev/null || [ -x /usr/lib/sctk/bin/sclite ] || missing="${missing} sctk"
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
# One hash over both files (each hashed on its own, then together): a change to either reinstalls.
want=$(sha256sum requirements.txt requirements-source.txt | sha256sum | cut -d' ' -f1)
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
  exit 0
fi

[ -x "${venv}/bin/python" ] || { log "creating ${venv}"; "${python}" -m venv "${venv}"; }
pip="${venv}/bin/python -m pip --disable-pip-version-check"
build_reqs=$(grep -E '^(pip|torch|torchaudio|numpy|Cython|setuptools|wheel)==' requirements.txt)
torch_pins=$(grep -E '^(torch|torchaudio)==' requirements.txt)
log "pip step 1/3: ${build_reqs//$'\n'/ }"
# shellcheck disable=SC2086
${pip} install -q --only-binary :all: ${build_reqs}
log "pip step 2/3: requirements-source.txt, sdists checked by sha256 (fairseq builds its extensions here)"
# Hash-checking mode is all-or-nothing per pip invocation, hence a step of its own; --no-deps
# because the dependencies are not hash-pinned (they come from requirements.txt in step 3).
# Without CUDA_HOME: fairseq's setup.py then adds CUDA extensions whose .cu sources its sdist
# does not ship (the build fails on GPU machines); HuBERT needs none of them.
env -u CUDA_HOME ${pip} install -q --require-hashes --no-deps --no-binary :all: --no-build-isolation \
  -r requirements-source.txt
log "pip step 3/3: requirements.txt, wheels only"
# torch is pinned again so no package can pull another torch in beside it. The packages of step
# 2 are installed already and satisfy what requirements.txt asks of them; any other package
# without a wheel stops the set-up (add it to requirements-source.txt with its hash) instead of
# being built unchecked.
# shellcheck disable=SC2086
${pip} install -q --only-binary :all: ${torch_pins} -r requirements.txt
${pip} check
echo "${want}" > "${stamp}"
log "environment ready in ${venv}"
