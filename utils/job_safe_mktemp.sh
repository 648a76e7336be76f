#!/usr/bin/env bash
# job_safe_mktemp.sh TEMPLATE: `mktemp -d TEMPLATE`, retried until the new dir's name does not hold
# the word JOB. run.pl and slurm.pl rewrite JOB everywhere in a JOB=1:N job's arguments, so a random
# name such as `.decode.tmp-WKJJOB` would send the jobs to a dir that does not exist.
set -euo pipefail
while dir=$(mktemp -d "$1"); [[ "${dir##*/}" == *JOB* ]]; do
  rmdir "${dir}"
done
echo "${dir}"
