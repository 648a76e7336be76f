#!/usr/bin/env perl
# slurm.pl: run a job (or an array of jobs) through SLURM, Kaldi's job interface (cmd.sh: slurm).
#
#   utils/slurm.pl [options] [JOB=1:N] <log> <command...>
#
# Writes a job script to <log's folder>/q/<log's name>.sh and submits it with `sbatch --wait`, so
# that, like run.pl, it returns when the job (every job of the array) has ended, with its exit
# status: 1 when sbatch failed or a job's log does not end its last attempt with "# Ended (code 0)"
# (a job SLURM killed for time or memory never writes that line), naming those logs. The job runs
# in the current folder with the current environment (sbatch's default --export=ALL), appends its
# output to <log> between the same header and footer as run.pl's, and JOB in <log> and <command>
# becomes the array index (Kaldi's rule for arguments, as in run.pl: each arrives as given).
#
# Options, and the sbatch options they become:
#   --gpu N         --gres=gpu:N (none for 0)      --mem M         --mem=M (per node, e.g. 64G)
#   --num-threads N --cpus-per-task=N              --time T        --time=T (e.g. 3-00:00:00)
#   --partition P   --partition=P                  --max-jobs-run N  --array=1-N%<this>
#
# SLURM_PL_DRY_RUN=1 prints the sbatch command and the job script instead of submitting them.
use strict;
use warnings;
use Cwd qw(getcwd);
use File::Basename qw(basename dirname);
use File::Path qw(make_path);

my %opts;
my %known = map { $_ => 1 } qw(--gpu --mem --num-threads --time --partition --max-jobs-run);
while (@ARGV && $ARGV[0] =~ /^--/) {
  my ($opt, $val) = (shift @ARGV, shift @ARGV);
  die "slurm.pl: option $opt needs a value\n" unless defined $val;
  die "slurm.pl: unknown option $opt (known: " . join(" ", sort keys %known) . ")\n" unless $known{$opt};
  $opts{$opt} = $val;
}

my ($jobvar, $first, $last) = (undef, 1, 1);
if (@ARGV && $ARGV[0] =~ /^([\w_][\w\d_]*)=(\d+)(?::(\d+))?$/) {
  ($jobvar, $first, $last) = ($1, $2, defined $3 ? $3 : $2);
  shift @ARGV;
  die "slurm.pl: empty job range $first:$last\n" if $last < $first;
}
die "usage: slurm.pl [options] [JOB=1:N] <log> <command...>\n" if @ARGV < 2;
my ($logpat, @cmd) = @ARGV;

sub quote {  # one word for the shell, exactly as given
  my ($w) = @_;
  return $w if $w =~ m{^[\w./:=+,@%^-]+$};
  $w =~ s/'/'\\''/g;
  return "'$w'";
}

sub shell_word {  # as run.pl: exactly as given, shell operators alone act as such; JOB: the array index
  my ($w) = @_;
  return $w if $w =~ /^(\||\|\||&&|;|&|<|>|>>|2>|2>>|2>&1|>&2|\(|\))$/;
  return quote($w) unless defined $jobvar;
  return join('"${SLURM_ARRAY_TASK_ID}"', map { $_ eq "" ? "" : quote($_) } split(/\Q$jobvar\E/, $w, -1));
}

my $cmd = join(" ", map { shell_word($_) } @cmd);
(my $header = $cmd) =~ s/([\\"\$`])/\\$1/g;  # for echo "...", with the array index shown
$header =~ s/\\"\\\$\{SLURM_ARRAY_TASK_ID\}\\"/\${SLURM_ARRAY_TASK_ID}/g;
my $output = $logpat;
$output =~ s/%/%%/g;
$output =~ s/\Q$jobvar\E/%a/g if defined $jobvar;
my $logdir = dirname($logpat);
my $name = basename($logpat);
$name =~ s/\.?\Q$jobvar\E//g if defined $jobvar;
$name =~ s/\.log$//;
my $script_path = "$logdir/q/$name.sh";

my $cwd = quote(getcwd());
my $script = <<"EOF";
#!/usr/bin/env bash
cd $cwd
echo "# $header"
echo "# Started at \$(date) on \$(hostname)"
start=\$(date +%s)
( $cmd )
code=\$?
elapsed=\$((\$(date +%s) - start))
echo "# Accounting: time=\${elapsed} threads=\${SLURM_CPUS_PER_TASK:-1}"
echo "# Ended (code \${code}) at \$(date), elapsed time \${elapsed} seconds"
exit \${code}
EOF

my @sbatch = ("sbatch", "--wait", "--job-name=$name", "--output=$output", "--open-mode=append");
if (defined $jobvar) {
  my $array = "--array=$first-$last";
  $array .= "%$opts{'--max-jobs-run'}" if $opts{"--max-jobs-run"};
  push @sbatch, $array;
}
push @sbatch, "--gres=gpu:$opts{'--gpu'}" if $opts{"--gpu"};
push @sbatch, "--mem=$opts{'--mem'}" if defined $opts{"--mem"};
push @sbatch, "--cpus-per-task=$opts{'--num-threads'}" if defined $opts{"--num-threads"};
push @sbatch, "--time=$opts{'--time'}" if defined $opts{"--time"};
push @sbatch, "--partition=$opts{'--partition'}" if defined $opts{"--partition"};
push @sbatch, $script_path;

if ($ENV{SLURM_PL_DRY_RUN}) {
  print join(" ", map { quote($_) } @sbatch), "\n", $script;
  exit 0;
}

make_path("$logdir/q");
open(my $fh, ">", $script_path) or die "slurm.pl: cannot write $script_path: $!\n";
print $fh $script;
close($fh);
chmod(0755, $script_path);
system(@sbatch);
my $status = $?;
die "slurm.pl: could not run sbatch: $!\n" if $status == -1;

# Which jobs failed: a log whose last attempt did not end with code 0 (or did not end: killed by SLURM).
my @failed;
for my $id ($first .. $last) {
  (my $log = $logpat) =~ s/\Q$jobvar\E/$id/g if defined $jobvar;
  $log = $logpat unless defined $jobvar;
  my $ended_ok = 0;
  if (open(my $in, "<", $log)) {
    while (<$in>) {
      $ended_ok = 0 if /^# Started at /;
      $ended_ok = 1 if /^# Ended \(code 0\) at /;
    }
    close($in);
  }
  push @failed, $log unless $ended_ok;
}
if ($status != 0 || @failed) {
  @failed = ($logpat) unless @failed;
  my $ids = $last - $first + 1;
  if ($ids == 1) { print STDERR "slurm.pl: job failed, log is in $failed[0]\n"; }
  else { print STDERR "slurm.pl: " . scalar(@failed) . " / $ids failed, log is in " . join(" ", @failed) . "\n"; }
  exit 1;
}
exit 0;
