#!/usr/bin/env bash
# A throw-away single-node Slurm cluster on localhost, for tests and CI.
#
# Usage: scripts/slurm/local_cluster.sh {start|stop|status|env}
#
# Why this shape: CI machines are bare Debian 12 containers without systemd and often without a
# resolvable short hostname, so everything runs as plain daemons bound to 127.0.0.1 under a
# state directory ($MIA_SLURM_DIR, default /tmp/mia-slurm) with the config there too. Nothing
# else is shared with the system except /etc/slurm/{slurm,gres,cgroup}.conf, which become symlinks
# to the state dir: the plugin's job step strips SLURM_CONF before its nested `srun`, so the
# default path must lead here. A real (non-symlink) /etc/slurm/slurm.conf is never replaced:
# `start` refuses instead. Clients may also use SLURM_CONF (print it with `env`). No accounting
# (no slurmdbd), so the Snakemake plugin must poll with `--slurm-status-command squeue`.
# A fake GPU (gres gpu:1 backed by /dev/null) lets GPU requests schedule on CPU-only machines.
#
# Needs root (daemons run as root; apt installs what is missing). Environment:
#   MIA_SLURM_DIR            state dir (config, logs, pid files, spool)    [/tmp/mia-slurm]
#   MIA_SLURM_PARTITION      partition name                                [debug]
#   MIA_SLURM_CTLD_PORT      slurmctld port (slurmd uses port+1)           [6817]
#   MIA_SLURM_START_TIMEOUT  seconds to wait for the node to become idle   [60]
set -euo pipefail

STATE_DIR="${MIA_SLURM_DIR:-/tmp/mia-slurm}"
PARTITION="${MIA_SLURM_PARTITION:-debug}"
CTLD_PORT="${MIA_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
START_TIMEOUT="${MIA_SLURM_START_TIMEOUT:-60}"
NODE=localhost
CONF="$STATE_DIR/slurm.conf"
SYSTEM_CONF_DIR=/etc/slurm
CONF_FILES=(slurm.conf gres.conf cgroup.conf)
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
LOG_DIR="$STATE_DIR/log"
export SLURM_CONF="$CONF"

die() {
    echo "local_cluster.sh: error: $*" >&2
    exit 1
}

log() { echo "local_cluster.sh: $*" >&2; }

# --- installation --------------------------------------------------------------------------

missing_packages() {
    # Debian package names for the commands we need and lack.
    local pkgs=()
    command -v munged >/dev/null 2>&1 || pkgs+=(munge)
    command -v slurmctld >/dev/null 2>&1 || pkgs+=(slurmctld)
    command -v slurmd >/dev/null 2>&1 || pkgs+=(slurmd)
    command -v sbatch >/dev/null 2>&1 || pkgs+=(slurm-client)
    echo "${pkgs[@]:-}"
}

install_missing() {
    local pkgs
    pkgs="$(missing_packages)"
    [[ -z "$pkgs" ]] && return 0
    command -v apt-get >/dev/null 2>&1 \
        || die "missing Slurm/munge commands and no apt-get to install them ($pkgs); install them by hand"
    log "installing with apt: $pkgs"
    # RUNLEVEL=1 keeps invoke-rc.d from starting the packaged services (no systemd here anyway).
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 \
        || { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get update failed (log: $LOG_DIR/apt.log)"; }
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $pkgs >>"$LOG_DIR/apt.log" 2>&1 \
        || { tail -n 20 "$LOG_DIR/apt.log" >&2; die "apt-get install $pkgs failed (log: $LOG_DIR/apt.log)"; }
    pkgs="$(missing_packages)"
    [[ -z "$pkgs" ]] || die "still missing after apt install: $pkgs"
}

# --- configuration -------------------------------------------------------------------------

node_hardware() {
    # "CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.." as slurmd sees it,
    # so slurmd never rejects its own registration for a topology mismatch.
    local line
    line="$(SLURM_CONF=/dev/null slurmd -C 2>/dev/null | head -n 1 || true)"
    if [[ "$line" =~ (CPUs=[0-9]+\ Boards=[0-9]+\ SocketsPerBoard=[0-9]+\ CoresPerSocket=[0-9]+\ ThreadsPerCore=[0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "CPUs=$(nproc)"
    fi
}

real_memory_mb() {
    # A little below the machine's total so slurmd's own check (total >= RealMemory) always passes.
    local total
    total="$(free -m | awk '/^Mem:/ {print $2}')"
    echo $((total * 95 / 100))
}

write_config() {
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool" "$LOG_DIR" "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR"
    local hardware memory
    hardware="$(node_hardware)"
    memory="$(real_memory_mb)"
    # Written aside then renamed: a client never reads a half-written slurm.conf.
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm/local_cluster.sh: a single-node test cluster on 127.0.0.1.
ClusterName=mia-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No systemd/cgroups in CI containers: track processes by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
GresTypes=gpu
ReturnToService=2
# Finished jobs stay visible to squeue (the plugin's status source here) for 10 minutes.
MinJobAge=600
# Seconds between SIGTERM and SIGKILL on scancel/preemption: time to write a checkpoint.
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 $hardware RealMemory=$memory Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    # Without File= slurmd drops the GPU; /dev/null stands in for /dev/nvidia0.
    cat >"$STATE_DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null
EOF
    cat >"$STATE_DIR/cgroup.conf" <<EOF
# Unused (proctrack/linuxproc, task/none); present so slurmd finds no stray system file.
CgroupAutomount=no
EOF
}

link_system_config() {
    # /etc/slurm/*.conf -> the state dir, unless a real config (not a symlink) is there.
    local f target
    mkdir -p "$SYSTEM_CONF_DIR"
    for f in "${CONF_FILES[@]}"; do
        target="$SYSTEM_CONF_DIR/$f"
        if [[ -e "$target" && ! -L "$target" ]]; then
            die "$target is a real Slurm config (this machine has its own Slurm); not replacing it." \
                "Run the local cluster on a machine without one (e.g. CI)."
        fi
    done
    for f in "${CONF_FILES[@]}"; do
        ln -sfn "$STATE_DIR/$f" "$SYSTEM_CONF_DIR/$f"
    done
}

unlink_system_config() {
    # Remove only our own symlinks.
    local f target
    for f in "${CONF_FILES[@]}"; do
        target="$SYSTEM_CONF_DIR/$f"
        if [[ -L "$target" && "$(readlink "$target")" == "$STATE_DIR/$f" ]]; then
            rm -f "$target"
        fi
    done
}

# --- daemons -------------------------------------------------------------------------------

pid_alive() {
    # True when the pid file names a live process.
    local pidfile="$1" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

start_munge() {
    pid_alive "$MUNGE_DIR/munged.pid" && return 0
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
        chmod 400 "$MUNGE_DIR/munge.key"
    fi
    mkdir -p "$MUNGE_DIR/seed"
    # --force: the state dir may live under a world-writable /tmp, which munged refuses by default.
    munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/seed/munged.seed" \
        || die "munged failed to start; log: $LOG_DIR/munged.log"
}

start_slurmctld() {
    pid_alive "$STATE_DIR/slurmctld.pid" && return 0
    slurmctld -f "$CONF" || die "slurmctld failed to start; log: $LOG_DIR/slurmctld.log"
}

start_slurmd() {
    pid_alive "$STATE_DIR/slurmd.pid" && return 0
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed to start; log: $LOG_DIR/slurmd.log"
}

node_state() {
    sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1 || true
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state="$(node_state)"
        case "$state" in
            idle | mixed | allocated | completing) return 0 ;;
            down* | drain* | drained*)
                # Left over from an earlier run (e.g. the machine rebooted under us): bring it back.
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    echo "--- tail of the daemons' logs ($LOG_DIR) ---" >&2
    for f in munged slurmctld slurmd; do
        [[ -f "$LOG_DIR/$f.log" ]] && { echo "== $f.log" >&2; tail -n 15 "$LOG_DIR/$f.log" >&2; }
    done
    die "node $NODE not idle after ${START_TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
}

any_daemon_alive() {
    pid_alive "$MUNGE_DIR/munged.pid" || pid_alive "$STATE_DIR/slurmctld.pid" \
        || pid_alive "$STATE_DIR/slurmd.pid"
}

cmd_start() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (starts slurmctld/slurmd/munged as root)"
    mkdir -p "$LOG_DIR"
    install_missing
    # Rewrite the config only when nothing runs, so a second `start` never changes a live cluster.
    any_daemon_alive || write_config
    link_system_config
    start_munge
    start_slurmctld
    start_slurmd
    wait_idle
    log "cluster up: partition '$PARTITION' on $NODE; use: export SLURM_CONF=$CONF"
}

stop_pidfile() {
    local pidfile="$1" pid i
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

cmd_stop() {
    if pid_alive "$STATE_DIR/slurmctld.pid"; then
        # Cancel this cluster's jobs first so no slurmstepd outlives the daemons.
        squeue --noheader --format=%i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        sleep 1
    fi
    stop_pidfile "$STATE_DIR/slurmd.pid"
    stop_pidfile "$STATE_DIR/slurmctld.pid"
    stop_pidfile "$MUNGE_DIR/munged.pid"
    unlink_system_config
    log "stopped (state kept in $STATE_DIR)"
}

cmd_status() {
    pid_alive "$STATE_DIR/slurmctld.pid" || { echo "local cluster not running ($STATE_DIR)"; return 3; }
    sinfo
    squeue
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 {start|stop|status|env}" >&2
        exit 2
        ;;
esac
