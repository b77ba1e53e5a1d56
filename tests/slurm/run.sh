#!/usr/bin/env bash
# The pipeline on a real SLURM cluster: a one-node cluster on this machine (munged, slurmctld, slurmd, all
# configured and kept under a temporary directory), the sample archive run once locally and once with
# --workflow-profile profiles/slurm, and every table of both runs compared. Run by .ci/run after `make test`
# (which made .venv). Needs root: for apt-get when slurm-wlm or munge is missing, and for the daemons.
#   [VENV=.venv] [KEEP=1 (keep the temporary directory)] [RUN_TIMEOUT=seconds per run] tests/slurm/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
# A run normally takes under two minutes; a hung daemon or a lost job must fail CI, not stall it.
RUN_TIMEOUT=${RUN_TIMEOUT:-420}
start=$SECONDS
say() { echo "slurm test: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "no virtual environment at $VENV; run 'make test' (or tools/bootstrap.sh dev) first"
  exit 1
fi

# The daemons live in sbin, which not every user's PATH has.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
have() { for tool; do command -v "$tool" >/dev/null || return 1; done; }
need=()
have slurmctld slurmd sbatch squeue scancel sinfo || need+=(slurm-wlm)
have munged mungekey munge unmunge || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    say "missing system packages. Run:"
    say "  sudo apt-get install -y --no-install-recommends ${need[*]}"
    exit 1
  fi
  say "installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
  # The daemons run as root (SlurmUser=root), which keeps this throwaway cluster to one user and one key.
  say "the Slurm and munge daemons need root; run this script as root"
  exit 1
fi

stamp="$VENV/.installed-slurm"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing .[slurm] into $VENV"
  "$VENV/bin/python" -m pip install -q -e ".[slurm]"
  touch "$stamp"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cl_ml_tools-slurm.XXXXXX")
# Job-side, the executor starts each job with srun after removing every SLURM_* variable (SLURM_CONF too), so
# srun falls back to the configless cache path; the link below puts our slurm.conf there. Configless slurmd
# would make the same link itself, but it fetches the configuration through munge's default socket before it
# knows ours, and a private socket keeps this cluster apart from any munged the machine runs.
CONF_LINK=/run/slurm/conf
pids=()
made_link=
made_run_dir=
running=  # the snakemake run in progress (its timeout process)

stop() {  # stop TARGET: a pid, or -pgid for a whole process group; TERM, then KILL if it lingers
  local target=$1 i
  kill -TERM -- "$target" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "$target" 2>/dev/null || true
  wait "${target#-}" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT
  set +e
  # timeout leads a process group of its own: snakemake and its children. On TERM snakemake cancels its jobs.
  [ -n "$running" ] && stop "-$running"
  if [ ${#pids[@]} -gt 1 ]; then
    # Jobs left by a failed or killed run would otherwise outlive slurmd in their slurmstepd.
    timeout 20 squeue -h -o %A 2>/dev/null | xargs -r timeout 20 scancel 2>/dev/null
    for i in $(seq 50); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; done
  [ -n "$made_link" ] && rm -f "$CONF_LINK"
  [ -n "$made_run_dir" ] && rmdir "$(dirname "$CONF_LINK")" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    say "FAILED ($rc); the daemons' and jobs' logs follow"
    local logs=("$WORK/munge/munged.log") daemon log
    for daemon in slurmctld slurmd; do
      # A daemon that stopped before opening its log file said why on stderr only.
      log=$WORK/slurm/$daemon.log
      [ -s "$log" ] || log=$WORK/slurm/$daemon.err
      logs+=("$log")
    done
    for log in "${logs[@]}" "$WORK"/run/.snakemake/slurm_logs/*/*.log; do
      [ -s "$log" ] && { echo "----- $log" >&2; tail -n 40 "$log" >&2; }
    done
  fi
  if [ -n "${KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2 i
  shift 2
  for i in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  say "$what did not come up within $seconds s"
  return 1
}

# munge: the authentication every Slurm message carries. munged wants every directory above its socket
# searchable by all (mktemp made WORK private), and its key readable by its user only.
chmod 755 "$WORK"
mkdir -m 755 "$WORK/munge"
mungekey --create --keyfile="$WORK/munge/munge.key"
SOCKET=$WORK/munge/munge.socket
munged --foreground --key-file="$WORK/munge/munge.key" --socket="$SOCKET" --pid-file="$WORK/munge/munged.pid" \
  --seed-file="$WORK/munge/munged.seed" --log-file="$WORK/munge/munged.log" 2>>"$WORK/munge/munged.log" &
pids+=($!)
wait_for 10 munged bash -c "munge -n -S '$SOCKET' | unmunge -S '$SOCKET'"

# One node with this machine's CPUs and a little less than its memory (the rest is for the daemons and the
# Snakemake process that submits).
NODE=node1
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
if [ "$MEM_MB" -lt 8000 ]; then
  say "$MEM_MB MB for jobs is too little: the profile asks up to 8000 MB for one job (duplicates)"
  exit 1
fi
mkdir -p "$WORK/slurm/state" "$WORK/slurm/spool"
export SLURM_CONF=$WORK/slurm/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=cl_ml_tools
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmdPidFile=$WORK/slurm/slurmd.pid
SlurmctldLogFile=$WORK/slurm/slurmctld.log
SlurmdLogFile=$WORK/slurm/slurmd.log
# No cgroups, no accounting daemon: what a container allows and all this test needs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Without slurmdbd, sacct has nothing to say, so the executor asks squeue, which sees a finished job for
# MinJobAge seconds only; the plugin wants at least 3 x --slurm-init-seconds-before-status-checks.
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if [ -e "$CONF_LINK" ] || [ -L "$CONF_LINK" ]; then
  if [ -L "$CONF_LINK" ] && [ ! -e "$CONF_LINK" ]; then
    rm -f "$CONF_LINK"  # left by an earlier run of this script that was killed
  else
    say "$CONF_LINK exists: another Slurm runs on this machine; refusing to replace its configuration"
    exit 1
  fi
fi
[ -d "$(dirname "$CONF_LINK")" ] || { mkdir -p "$(dirname "$CONF_LINK")"; made_run_dir=1; }
ln -s "$WORK/slurm" "$CONF_LINK"
made_link=1

slurmctld -D -i -f "$SLURM_CONF" 2>>"$WORK/slurm/slurmctld.err" &
pids+=($!)
slurmd -D -N "$NODE" -f "$SLURM_CONF" 2>>"$WORK/slurm/slurmd.err" &
pids+=($!)
node_idle() { [ "$(sinfo -h -N -n "$NODE" -o %T)" = idle ]; }
wait_for 60 "node $NODE" node_idle
say "cluster up: $NODE with $CPUS CPUs and $MEM_MB MB ($((SECONDS - start)) s)"

mkdir "$WORK/run"
"$VENV/bin/python" "$REPO/tests/slurm/helper.py" prepare "$WORK/run" >/dev/null
cd "$WORK/run"
# Jobs inherit this environment (the executor submits with --export=ALL): the venv's tools, and the settings
# docs/slurm.md gives cluster nodes.
export PATH="$VENV/bin:$PATH" CL_ML_TOOLS_OFFLINE=1 CL_ML_TOOLS_MODEL_CACHE="$WORK/model-cache"
run() {  # run NAME ARGS...: snakemake with ARGS, its output in NAME.log
  local name=$1 t=$SECONDS rc=0
  shift
  # In the background, so that a TERM to this script runs the cleanup at once instead of after the run.
  timeout -s KILL "$RUN_TIMEOUT" "$VENV/bin/snakemake" -s "$REPO/Snakefile" "$@" >"$name.log" 2>&1 &
  running=$!
  wait "$running" || rc=$?
  running=
  if [ "$rc" -ne 0 ]; then
    tail -n 80 "$name.log" >&2
    [ "$rc" -eq 137 ] && say "$name run killed after $RUN_TIMEOUT s"
    say "$name run failed ($rc)"
    return "$rc"
  fi
  say "$name run: $((SECONDS - t)) s"
}

run local --cores "$CPUS"
# The one-node cluster's overrides: its CPUs cap every job (the profile asks up to 16 cores for a group), no
# account to charge, squeue for status (see MinJobAge above) polled soon after submission. And the ML rules'
# own threads instead of the profile's 4, as in the local run: onnxruntime's sums may depend on its thread
# count, and the tables must match exactly.
run slurm --workflow-profile "$REPO/profiles/slurm" --config results=results_slurm --cores "$CPUS" \
  --set-threads faces=2 face_embeddings=2 dino=2 clip=2 \
  --slurm-no-account --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2
submitted=$(grep -c "has been submitted with SLURM jobid" slurm.log || true)

"$VENV/bin/python" "$REPO/tests/slurm/helper.py" compare results_local results_slurm
# Two shards, ten steps each (ocr and places are off in the tests' config): 20 cluster jobs plus duplicates,
# people and events without grouping (report, tables and models are local rules); the profile's groups make
# that one media job, one ml job, duplicates, people, events.
if [ "$submitted" -ne 5 ]; then
  say "expected 5 cluster submissions (groups media and ml, rules duplicates, people and events), got $submitted"
  exit 1
fi
say "5 cluster submissions for 23 cluster jobs (groups media and ml, rules duplicates, people and events)"
say "passed in $((SECONDS - start)) s"
