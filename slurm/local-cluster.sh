#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for tests and for trying sweeps on one machine.
#
#   slurm/local-cluster.sh start [--hosts N]
#                                   install (apt, when missing) and start munged, MariaDB,
#                                   slurmdbd, slurmctld and slurmd; prints the SLURM_CONF line
#   slurm/local-cluster.sh status   which of its daemons run, and sinfo
#   slurm/local-cluster.sh env      the `export SLURM_CONF=...` line for clients (sbatch, srun)
#   slurm/local-cluster.sh stop     stop the daemons this script started (by their pid files),
#                                   and remove the hosts' namespaces, links and hosts files
#
# With --hosts N (N >= 1) the cluster has N hosts h1..hN, each its own Linux network namespace
# and UTS namespace (its own host name) with one slurmd, joined by a bridge through veth pairs.
# Addresses come from 198.18.0.0/15 (RFC 2544's benchmark range), a /24 of it per cluster: the
# first 198.18.X.0/24 that no interface of this machine uses, or $POSESCALE_SLURM_NET (e.g.
# 198.18.7; refused when in use or outside 198.18.0.0/15). NET.1 is the controller's side of the
# bridge (slurmctld stays in this machine's namespace), host i is NET.(10+i); the namespaces
# have no default route and IPv6 is off on the bridge, the veths and in the namespaces, so
# nothing leaves the machine (no router solicitations either). A host's processes also get their own mount namespace, in which $DIR/etc/etc-hosts is
# bound over /etc/hosts, so h1..hN resolve on every host (the file itself is not changed). Run
# a command on a host with `slurm/local-cluster.sh exec h2 CMD...`. Needs root, `ip` and
# util-linux's nsenter and unshare. Faults: `kill-host h2` kills every process in h2's network
# namespace (its slurmd, job steps and training processes: the host dies), `start-host h2`
# starts its slurmd again (the host is back), `link h2 down|up` takes its link down or up.
#
# Everything (config, state, logs, sockets, database) lives in $POSESCALE_SLURM_DIR (default
# /tmp/posescale-slurm); nothing under /etc is changed, and daemons it did not start are left
# alone. The daemons listen on one address each, never on all of the machine's: slurmctld on
# the controller address (NET.1 with hosts, else 127.0.0.1), slurmdbd, MariaDB and a one-node
# slurmd on 127.0.0.1, each host's slurmd on its own (Slurm's CommunicationParameters
# NoCtldInAddrAny,NoInAddrAny bind the address the daemon's host name resolves to: each daemon
# starts in a mount namespace whose /etc/hosts maps that name to its address). Each start begins from fresh state with a fresh FirstJobId, so job ids never repeat
# across restarts (a reused submitit folder would otherwise read stale results).
#
# Choices that matter (Slurm 22.05, Debian 12): proctrack/linuxproc + task/none need no
# cgroups; DefMemPerCPU lets array tasks share the node; sched_interval=1 starts array tasks
# at once; slurmdbd + MariaDB give sacct, without which submitit never sees a cancelled job
# end; the munge socket folder must be mode 0755.
set -euo pipefail

DIR=${POSESCALE_SLURM_DIR:-${TMPDIR:-/tmp}/posescale-slurm}
NET=${POSESCALE_SLURM_NET:-}
[[ -f $DIR/etc/net ]] && NET=$(<"$DIR/etc/net")  # what this cluster's start chose
CLUSTER=posescale
TAG=$(printf '%s' "$DIR" | md5sum | cut -c1-6)  # names this cluster's links and namespaces
BRIDGE=psbr$TAG
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
SlurmctldHost=$host($(controller_addr))
SlurmctldPort=$ctld_port
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
$auth
CredType=cred/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/slurmd%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd$(pid_suffix).pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd%n.log
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
$(node_lines "$host" "$cpus" "$mem")
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
$auth
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$dbd_port
CommunicationParameters=NoInAddrAny
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

hosts() { [[ -f $DIR/etc/hosts ]] && cat "$DIR/etc/hosts"; return 0; }  # h1..hN, one a line
host_count() { hosts | grep -c . || true; }
netns_of() { echo "ps$TAG-$1"; }
addr_of() { echo "$NET.$((10 + ${1#h}))"; }
controller_addr() { if (($(host_count))); then echo "$NET.1"; else echo 127.0.0.1; fi; }

choose_net() {  # a 198.18.0.0/15 /24 for the bridge that no interface here uses
    local used x
    used=$(ip -o -4 addr show 2>/dev/null | awk '{print $4}')
    in_use() { grep -q "^$1\." <<<"$used"; }
    if [[ -n $NET ]]; then
        [[ $NET =~ ^198\.(18|19)\.([0-9]{1,3})$ ]] && ((BASH_REMATCH[2] <= 255)) ||
            die "POSESCALE_SLURM_NET=$NET: give the first three numbers of a /24 in 198.18.0.0/15 (e.g. 198.18.7)"
        in_use "$NET" && die "$NET.0/24 is in use on this machine (another cluster?): $(ip -o -4 addr show | grep " $NET\." | awk '{print $2}' | head -1); set POSESCALE_SLURM_NET to another, or leave it unset"
        return 0
    fi
    for x in $(seq 0 255); do
        in_use "198.18.$x" || { NET=198.18.$x; return 0; }
    done
    die "every 198.18.X.0/24 is in use on this machine; set POSESCALE_SLURM_NET=198.19.X"
}

no_ipv6() {  # no_ipv6 [NS] IFACE...: IPv6 off (no link-local address, no router solicitations)
    local ns=$1 iface
    shift
    for iface in "$@"; do
        if [[ -n $ns ]]; then
            ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$iface.disable_ipv6=1" 2>/dev/null || true
        else
            sysctl -qw "net.ipv6.conf.$iface.disable_ipv6=1" 2>/dev/null || true
        fi
    done
}

hosts_file() {  # hosts_file NAME ADDR: an /etc/hosts for a daemon that binds NAME's ADDR
    local file=$DIR/etc/hosts-$1
    {
        echo "127.0.0.1 localhost"
        echo "$2 $(hostname) $(hostname -s)"
        local h
        for h in $(hosts); do echo "$(addr_of "$h") $h"; done
    } >"$file"
    echo "$file"
}

bound_to() {  # bound_to ADDR CMD...: CMD with this machine's name resolving to ADDR only
    local file
    file=$(hosts_file "${1//./-}" "$1")
    shift
    unshare --mount --propagation private \
        bash -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$file" "$@"
}
pid_suffix() { if (($(host_count))); then echo "-%n"; fi; }

node_lines() {  # NodeName and PartitionName lines: this machine, or the namespace hosts
    local host=$1 cpus=$2 mem=$3 count
    count=$(host_count)
    if ((count == 0)); then
        echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        echo "PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP"
        return
    fi
    local h
    for h in $(hosts); do
        echo "NodeName=$h NodeAddr=$(addr_of "$h") CPUs=$cpus RealMemory=$((mem / count)) State=UNKNOWN"
    done
    echo "PartitionName=local Nodes=h[1-$count] Default=YES MaxTime=INFINITE State=UP"
}

make_hosts() {  # the bridge, and per host a namespace, a veth pair, an address, a hosts file
    local count=$1 h ns i
    [[ $(id -u) == 0 ]] || die "--hosts needs root (network namespaces)"
    command -v ip >/dev/null || die "--hosts needs the ip command (iproute2)"
    : >"$DIR/etc/hosts"
    ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE (no CAP_NET_ADMIN?)"
    echo "link $BRIDGE" >>"$DIR/etc/made"
    no_ipv6 "" "$BRIDGE"
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    {
        echo "127.0.0.1 localhost"
        echo "$NET.1 $(hostname -s)"
        for ((i = 1; i <= count; i++)); do echo "$NET.$((10 + i)) h$i"; done
    } >"$DIR/etc/etc-hosts"
    for ((i = 1; i <= count; i++)); do
        h=h$i ns=$(netns_of "h$i")
        ip netns add "$ns" || die "cannot create the network namespace $ns"
        echo "netns $ns" >>"$DIR/etc/made"
        ip link add "v$TAG$h" type veth peer name eth0 netns "$ns"
        no_ipv6 "" "v$TAG$h"
        no_ipv6 "$ns" all default eth0 lo
        ip link set "v$TAG$h" master "$BRIDGE" up
        ip -n "$ns" addr add "$(addr_of "$h")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        mkdir -p "$DIR/state/slurmd$h"
        echo "$h" >>"$DIR/etc/hosts"
    done
}

remove_hosts() {  # what make_hosts recorded, in reverse
    [[ -f $DIR/etc/made ]] || return 0
    local kind name
    tac "$DIR/etc/made" | while read -r kind name; do
        case $kind in
        netns) ip netns del "$name" 2>/dev/null || true ;;
        link) ip link del "$name" 2>/dev/null || true ;;
        esac
    done
    rm -f "$DIR/etc/made"
}

on_host() {  # on_host hN CMD...: run CMD in host hN's namespaces, with its host name
    local h=$1
    shift
    hosts | grep -qx "$h" || die "no host '$h' in this cluster (hosts: $(hosts | tr '\n' ' '))"
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup file system slurmd
    # reads. With EXEC=exec (the `exec` command) this process becomes CMD: nsenter and unshare
    # exec rather than fork here, so whoever started `exec` can signal CMD itself.
    ${EXEC:-} nsenter --net="/run/netns/$(netns_of "$h")" unshare --uts --mount --propagation private \
        bash -c 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"' \
        "$h" "$DIR/etc/etc-hosts" "$@"
}

start_slurmds() {
    local h
    if (($(host_count) == 0)); then
        bound_to 127.0.0.1 slurmd -f "$SLURM_CONF"
        return
    fi
    for h in $(hosts); do
        on_host "$h" slurmd -f "$SLURM_CONF"
    done
}

kill_host() {  # every process in the host's network namespace, at once
    local h=${1:-} pids
    hosts | grep -qx "$h" || die "no host '$h' in this cluster"
    pids=$(ip netns pids "$(netns_of "$h")" | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -n ${pids// /} ]] && kill -9 $pids 2>/dev/null
    rm -f "$DIR/run/slurmd-$h.pid"
    log "killed $h: $(wc -w <<<"$pids") process(es)"
}

start_host() {
    local h=${1:-}
    export SLURM_CONF=$DIR/etc/slurm.conf
    pid_of "slurmd-$h" >/dev/null && die "$h is up already"
    on_host "$h" slurmd -f "$SLURM_CONF"
    log "started slurmd on $h"
}

set_link() {  # set_link hN up|down: the host's side of the bridge
    local h=${1:-} state=${2:-}
    hosts | grep -qx "$h" || die "no host '$h' in this cluster"
    [[ $state == up || $state == down ]] || die "link $h wants up or down, got '$state'"
    ip link set "v$TAG$h" "$state"
    log "link of $h $state"
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
    local count=0
    if [[ ${1:-} == --hosts ]]; then
        count=${2:-}
        [[ $count =~ ^[1-9][0-9]?$ ]] || die "--hosts wants a number of hosts (1-99), got '$count'"
    fi
    if pid_of slurmctld >/dev/null; then
        log "already running in $DIR"
        print_env
        return 0
    fi
    stop >/dev/null 2>&1 || true
    NET=${POSESCALE_SLURM_NET:-}
    ((count == 0)) || choose_net  # before anything is made
    install_packages
    # Only ever remove a folder this script made (or an empty one).
    if [[ -d $DIR && -n $(ls -A "$DIR") && ! -f $DIR/etc/slurm.conf ]]; then
        die "$DIR exists and is not a cluster folder of this script; set POSESCALE_SLURM_DIR elsewhere"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{etc,run,log,munge,db,state/ctld,"state/slurmd$(hostname -s)"}
    if ((count)); then
        echo "$NET" >"$DIR/etc/net"
        make_hosts "$count"
    fi
    write_configs
    export SLURM_CONF=$DIR/etc/slurm.conf
    start_munge
    start_database
    bound_to 127.0.0.1 slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd bash -c "ss -ltn | grep -q ':$(awk -F= '/^DbdPort/ {print $2}' "$DIR/etc/slurmdbd.conf") '"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    bound_to "$(controller_addr)" slurmctld -i -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    start_slurmds
    local nodes=$((count > 0 ? count : 1))
    wait_for 30 "the node(s)" bash -c \
        "(( \$(sinfo -h -N -o %T | grep -cE '^(idle|mixed|allocated)') == $nodes ))"
    log "started in $DIR$( ((count)) && echo " with $count hosts: $(hosts | tr '\n' ' ')")"
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

daemons() {  # this cluster's daemons, in stop order
    local h
    if (($(host_count))); then for h in $(hosts); do echo "slurmd-$h"; done; fi
    printf '%s\n' "${DAEMONS[@]}"
}

stop() {
    end_jobs
    local stopped=()
    for daemon in $(daemons); do
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
    remove_hosts
    log "stopped: ${stopped[*]:-nothing was running}"
}

status() {
    local up=0 all
    all=$(daemons | grep -vx slurmd | grep -c . || true)
    (($(host_count))) || all=$((all + 1))
    for daemon in $(daemons | { (($(host_count))) && grep -vx slurmd || cat; }); do
        if pid=$(pid_of "$daemon"); then
            echo "$daemon: running (pid $pid)"
            up=$((up + 1))
        else
            echo "$daemon: not running"
        fi
    done
    if ((up == all)); then
        SLURM_CONF=$DIR/etc/slurm.conf sinfo
        return 0
    fi
    return 3
}

print_env() { echo "export SLURM_CONF=$DIR/etc/slurm.conf"; }

case "${1:-}" in
start) start "${@:2}" ;;
exec) EXEC=exec on_host "${@:2}" ;;
kill-host) kill_host "${2:-}" ;;
start-host) start_host "${2:-}" ;;
link) set_link "${2:-}" "${3:-}" ;;
stop) stop ;;
status) status ;;
env) print_env ;;
*)
    echo "usage: $0 start [--hosts N]|stop|status|env|exec HOST CMD...|kill-host HOST|start-host HOST|link HOST up|down   (state in \$POSESCALE_SLURM_DIR, now $DIR)" >&2
    exit 2
    ;;
esac
