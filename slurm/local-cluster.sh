#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for tests and for trying sweeps on one machine.
#
#   slurm/local-cluster.sh start    install (apt, when missing) and start munged, MariaDB,
#                                   slurmdbd, slurmctld and slurmd; prints the SLURM_CONF line
#   slurm/local-cluster.sh status   which of its daemons run, and sinfo
#   slurm/local-cluster.sh env      the `export SLURM_CONF=...` line for clients (sbatch, srun)
#   slurm/local-cluster.sh stop     stop the daemons this script started (by their pid files)
#
# Everything (config, state, logs, sockets, database) lives in $POSESCALE_SLURM_DIR (default
# /tmp/posescale-slurm); nothing under /etc is changed, and daemons it did not start are left
# alone. Each start begins from fresh state with a fresh FirstJobId, so job ids never repeat
# across restarts (a reused submitit folder would otherwise read stale results).
#
# Choices that matter (Slurm 22.05, Debian 12): proctrack/linuxproc + task/none need no
# cgroups; DefMemPerCPU lets array tasks share the node; sched_interval=1 starts array tasks
# at once; slurmdbd + MariaDB give sacct, without which submitit never sees a cancelled job
# end; the munge socket folder must be mode 0755.
set -euo pipefail

DIR=${POSESCALE_SLURM_DIR:-${TMPDIR:-/tmp}/posescale-slurm}
CLUSTER=posescale
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)  # stop order

log() { echo "local-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_of() {  # the pid in $DIR/run/$1.pid if that process is alive
    local file="$DIR/run/$1.pid"
    [[ -f $file ]] || return 1
    local pid
    pid=$(<"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what did not come up within ${seconds}s; see the logs in $DIR/log"
}

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]} and not root: cannot apt-get install"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get on this machine"
    log "installing ${PACKAGES[*]} with apt-get"
    # Debian's maintainer scripts would start system daemons; keep them off.
    local policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; }; } \
        >"${TMPDIR:-/tmp}/posescale-slurm-apt.log" 2>&1 ||
        die "apt-get install failed; see ${TMPDIR:-/tmp}/posescale-slurm-apt.log"
    ((created)) && rm -f "$policy"
    return 0
}

write_configs() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    local ctld_port slurmd_port dbd_port db_port
    ctld_port=$(free_port) slurmd_port=$(free_port) dbd_port=$(free_port) db_port=$(free_port)
    # Job ids from a fresh range each start (Slurm allows up to 0x03ff0000).
    local first_job_id=$(((($(date +%s) % 600000) * 100) + 1000))
    local auth="AuthInfo=socket=$DIR/munge/munge.socket"
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
$auth
CredType=cred/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus / 2))
FirstJobId=$first_job_id
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
$auth
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=posescale
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    echo "$db_port" >"$DIR/etc/db_port"
}

start_munge() {
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$DIR/munge/munge.key"
    chmod 0755 "$DIR/munge"
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    wait_for 10 munged munge --socket="$DIR/munge/munge.socket" -n
}

start_database() {
    local port
    port=$(<"$DIR/etc/db_port")
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log"
    mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/run/mysqld.sock" \
        --bind-address=127.0.0.1 --port="$port" --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M --skip-name-resolve \
        >/dev/null 2>&1 &
    wait_for 30 MariaDB mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -e 'select 1'
    mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'posescale';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start() {
    if pid_of slurmctld >/dev/null || pid_of slurmd >/dev/null; then
        log "already running in $DIR"
        print_env
        return 0
    fi
    stop >/dev/null 2>&1 || true
    install_packages
    # Only ever remove a folder this script made (or an empty one).
    if [[ -d $DIR && -n $(ls -A "$DIR") && ! -f $DIR/etc/slurm.conf ]]; then
        die "$DIR exists and is not a cluster folder of this script; set POSESCALE_SLURM_DIR elsewhere"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{etc,run,log,munge,db,state/ctld,state/slurmd}
    write_configs
    export SLURM_CONF=$DIR/etc/slurm.conf
    start_munge
    start_database
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd bash -c "ss -ltn | grep -q ':$(awk -F= '/^DbdPort/ {print $2}' "$DIR/etc/slurmdbd.conf") '"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    slurmctld -i -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF"
    wait_for 30 "the node" bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
    log "started in $DIR"
    print_env
}

end_jobs() {  # cancel this cluster's jobs, then end what is left of their processes
    export SLURM_CONF=$DIR/etc/slurm.conf
    if pid_of slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || jobs=
        if [[ -n ${jobs// /} ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    # What is left: this cluster's slurmstepd processes (they run in $DIR/log) and everything
    # below them.
    local steps=() pid
    for pid in $(pgrep -x slurmstepd); do
        [[ $(readlink "/proc/$pid/cwd") == "$DIR"/* ]] && steps+=("$pid")
    done
    ((${#steps[@]})) || return 0
    local tree=("${steps[@]}") table
    table=$(ps -e -o pid=,ppid=)
    for ((i = 0; i < ${#tree[@]}; i++)); do
        tree+=($(awk -v p="${tree[i]}" '$2 == p {print $1}' <<<"$table"))
    done
    kill -9 "${tree[@]}" 2>/dev/null || true
    log "ended ${#tree[@]} leftover job process(es)"
}

stop() {
    end_jobs
    local stopped=()
    for daemon in "${DAEMONS[@]}"; do
        local pid
        if pid=$(pid_of "$daemon"); then
            kill "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
            stopped+=("$daemon")
        fi
        rm -f "$DIR/run/$daemon.pid"
    done
    log "stopped: ${stopped[*]:-nothing was running}"
}

status() {
    local up=0
    for daemon in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$daemon"); then
            echo "$daemon: running (pid $pid)"
            up=$((up + 1))
        else
            echo "$daemon: not running"
        fi
    done
    if ((up == ${#DAEMONS[@]})); then
        SLURM_CONF=$DIR/etc/slurm.conf sinfo
        return 0
    fi
    return 3
}

print_env() { echo "export SLURM_CONF=$DIR/etc/slurm.conf"; }

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
*)
    echo "usage: $0 start|stop|status|env   (state in \$POSESCALE_SLURM_DIR, now $DIR)" >&2
    exit 2
    ;;
esac
