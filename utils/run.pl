#!/usr/bin/env perl
# run.pl: run a job (or an array of jobs) on this machine, Kaldi's job interface (cmd.sh: local).
#
#   utils/run.pl [options] [JOB=1:N] <log> <command...>
#
# Runs <command> with its stdout and stderr appended to <log> (its folder is created), between a
# header ("# <command>", "# Started at") and a footer ("# Accounting", "# Ended (code N) at"),
# and exits 0 when it (every job of the array) succeeded, 1 otherwise, naming the failed logs.
# With JOB=1:N, N jobs run in parallel (at most --max-jobs-run at once), and the word JOB in <log>
# and <command> becomes the job's number (any name works: XX=1:4 replaces XX).
#
# Options: --max-jobs-run N; --gpu N, --mem M, --num-threads N, --time T, --partition P are accepted
# for slurm.pl's sake and ignored (on one machine, fairseq and ESPnet pick the GPUs themselves).
#
# Unlike Kaldi's run.pl, every argument reaches the command exactly as given (quoted for the shell
# when needed, so Hydra's '${oc.env:RANK}' or a list with spaces arrive intact); only an argument
# that is a shell operator on its own ('|', '&&', ';', '>', ...) acts as one, so Kaldi's
# `run.pl log a \| b` still pipes. And the log is appended to, not replaced: a rerun of a run that
# resumes from its checkpoint keeps the killed attempt's log above its own.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Path qw(make_path);

my $max_jobs_run = 0;  # 0: all at once
my %ignored = map { $_ => 1 } qw(--gpu --mem --num-threads --time --partition --config);
while (@ARGV && $ARGV[0] =~ /^--/) {
  my ($opt, $val) = (shift @ARGV, shift @ARGV);
  die "run.pl: option $opt needs a value\n" unless defined $val;
  if ($opt eq "--max-jobs-run") { $max_jobs_run = $val; }
  elsif (!$ignored{$opt}) { die "run.pl: unknown option $opt\n"; }
}

my ($jobvar, $first, $last) = (undef, 1, 1);
if (@ARGV && $ARGV[0] =~ /^([\w_][\w\d_]*)=(\d+):(\d+)$/) {
  ($jobvar, $first, $last) = ($1, $2, $3);
  shift @ARGV;
  die "run.pl: empty job range $first:$last\n" if $last < $first;
} elsif (@ARGV && $ARGV[0] =~ /^([\w_][\w\d_]*)=(\d+)$/) {
  ($jobvar, $first, $last) = ($1, $2, $2);
  shift @ARGV;
}
die "usage: run.pl [options] [JOB=1:N] <log> <command...>\n" if @ARGV < 2;
my ($logpat, @cmd) = @ARGV;

sub shell_word {
  my ($w) = @_;
  return $w if $w =~ m{^[\w./:=+,@%^-]+$};
  return $w if $w =~ /^(\||\|\||&&|;|&|<|>|>>|2>|2>>|2>&1|>&2|\(|\))$/;
  $w =~ s/'/'\\''/g;
  return "'$w'";
}

sub substitute {
  my ($s, $id) = @_;
  $s =~ s/\Q$jobvar\E/$id/g if defined $jobvar;
  return $s;
}

sub start_job {
  my ($id) = @_;
  my $log = substitute($logpat, $id);
  my $cmd = join(" ", map { shell_word(substitute($_, $id)) } @cmd);
  my $dir = dirname($log);
  make_path($dir) unless -d $dir;
  open(my $fh, ">>", $log) or die "run.pl: cannot write $log: $!\n";
  print $fh "# $cmd\n# Started at " . localtime() . "\n";
  close($fh);
  my $pid = fork();
  die "run.pl: fork failed: $!\n" unless defined $pid;
  if ($pid == 0) {
    open(STDOUT, ">>", $log) or die "run.pl: cannot write $log: $!\n";
    open(STDERR, ">&", \*STDOUT) or die;
    exec("bash", "-c", $cmd) or die "run.pl: cannot run bash: $!\n";
  }
  return ($pid, $log);
}

my (%running, @failed);
my $ids = $last - $first + 1;
for my $id ($first .. $last) {
  while ($max_jobs_run > 0 && keys(%running) >= $max_jobs_run) { finish(wait()); }
  my ($pid, $log) = start_job($id);
  $running{$pid} = [$log, time()];
}
finish(wait()) while keys %running;

sub finish {
  my ($pid) = @_;
  my $status = $?;
  return unless exists $running{$pid};
  my ($log, $start) = @{delete $running{$pid}};
  my $code = ($status & 127) ? 128 + ($status & 127) : $status >> 8;
  my $elapsed = time() - $start;
  open(my $fh, ">>", $log) or die "run.pl: cannot write $log: $!\n";
  print $fh "# Accounting: time=$elapsed threads=1\n";
  print $fh "# Ended (code $code) at " . localtime() . ", elapsed time $elapsed seconds\n";
  close($fh);
  push @failed, $log if $code != 0;
}

if (@failed) {
  if ($ids == 1) { print STDERR "run.pl: job failed, log is in $failed[0]\n"; }
  else { print STDERR "run.pl: " . scalar(@failed) . " / $ids failed, log is in " . join(" ", sort @failed) . "\n"; }
  exit 1;
}
exit 0;
