# How run.sh runs its jobs, as in Kaldi and ESPnet recipes: source it, don't run it.
#
# Each *_cmd takes Kaldi's job interface:
#   ${cuda_cmd} [--gpu N] [--mem M] [--num-threads N] [JOB=1:N] <log> <command...>
# and returns when the job has ended, with its status; the command's output goes to <log>.
#
#   cmd_backend=local : utils/run.pl, on this machine (the default)
#   cmd_backend=slurm : utils/slurm.pl, `sbatch --wait` (--gpu N: --gres=gpu:N); add the sbatch
#                       options your cluster needs to slurm_opts, e.g. "--partition gpu --time 3-00:00:00"
#
# Choose here, or per run: `cmd_backend=slurm ./run.sh ...`. Stage 3 (distillation) runs through
# ${cuda_cmd} with --gpu <ngpu> when --ngpu > 0, else through ${train_cmd}; one job per growth
# operator, logged to exp/distill/<operator>/train.log. Several nodes: see the README
# ("Several GPUs and machines"); a multi-node job is launched with torchrun or sbatch directly.
cmd_backend=${cmd_backend:-local}
slurm_opts=${slurm_opts:-}

case "${cmd_backend}" in
  local)
    export train_cmd="utils/run.pl"
    export cuda_cmd="utils/run.pl"
    export decode_cmd="utils/run.pl"
    ;;
  slurm)
    export train_cmd="utils/slurm.pl ${slurm_opts}"
    export cuda_cmd="utils/slurm.pl ${slurm_opts}"
    export decode_cmd="utils/slurm.pl ${slurm_opts}"
    ;;
  *)
    echo "cmd.sh: cmd_backend=${cmd_backend}: choose local or slurm" >&2
    return 1
    ;;
esac
