#!/usr/bin/env bash
# local/export_upstream.sh SRC OUT [export options]: a teacher or student as fairseq HuBERT + S3PRL
# checkpoints in OUT (fairseq_plugin.export), shared by the stages that evaluate upstreams. Kept
# while its stamp (SRC's sha256 and the export options) is current: a re-distilled SRC is exported
# again, whatever the file times say.
set -euo pipefail
src=$1 out=$2
shift 2
key=$(python -m local.stamp --file source="${src}" --value options="--formats fairseq s3prl $*")
if [ -f "${out}/.stamp.json" ] && [ "$(cat "${out}/.stamp.json")" = "${key}" ]; then
  echo "$(date '+%Y-%m-%dT%H:%M:%S') (export_upstream) ${out} is up to date with ${src}"
  exit 0
fi
rm -f "${out}/.stamp.json"  # the export rewrites its files one by one: no stamp until all are in place
python -m fairseq_plugin.export "${src}" "${out}" --formats fairseq s3prl "$@"
echo "${key}" > "${out}/.stamp.json"
