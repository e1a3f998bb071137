#!/usr/bin/env bash
# A real one-node SLURM cluster on this host (munge, MariaDB, slurmdbd, slurmctld, slurmd from
# Debian's packages), for testing the Snakemake SLURM executor in CI. Needs root and apt.
#
#   workflow/ci/local-slurm.sh start    install what is missing, configure, start, wait until idle
#   workflow/ci/local-slurm.sh stop     stop the daemons this script started (by recorded PID)
#   workflow/ci/local-slurm.sh status
#
# Idempotent: `start` on a running cluster leaves it running. The node advertises one GPU
# (gres gpu:1 backed by a placeholder device file) so GPU requests can be submitted and
# accounted on machines without GPUs. Account `gbml` holds the current user.
# Settings that matter on these machines (Slurm 22.05): cons_tres with CR_Core_Memory,
# linuxproc proctrack and no task plugin (no cgroups here), DefMemPerCPU (otherwise a job with
# no --mem takes the whole node), RealMemory 5% under what slurmd -C reports (otherwise the
# node drains), slurmdbd accounting (the executor plugin polls job states with sacct).
set -euo pipefail

STATE=${GBML_SLURM_STATE:-/var/lib/gbml-slurm}          # PIDs, logs, spool, the fake GPU
CONF=/etc/slurm
CLUSTER=gbml-ci
ACCOUNT=gbml
DAEMONS="slurmd slurmctld slurmdbd mariadb munged"      # stop order

log() { echo "local-slurm: $*" >&2; }

pid_alive() { [[ -s "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

install_packages() {
    local missing=()
    for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing (missing: ${missing[*]})"
    local packages="munge mariadb-server slurmdbd slurmctld slurmd slurm-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $packages >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $packages >/dev/null; }
}

wait_for() {   # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq 1 $((seconds * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "timed out after ${seconds}s waiting for $what; logs in $STATE/log"
    return 1
}

write_configs() {
    local node mem_real mem_node
    node=$(hostname -s)
    mem_real=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem_node=$((mem_real * 95 / 100))
    mkdir -p "$STATE"/{log,spool/ctld,spool/d} "$CONF"
    touch "$STATE/fake-gpu0"
    cat > "$CONF/slurm.conf" <<EOF
# Written by workflow/ci/local-slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$node CPUs=$(nproc) RealMemory=$mem_node Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    echo "NodeName=$node Name=gpu File=$STATE/fake-gpu0" > "$CONF/gres.conf"
    cat > "$CONF/slurmdbd.conf" <<EOF
# Written by workflow/ci/local-slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=gbml-ci
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
    pid_alive munged && return
    mkdir -p /run/munge && chown munge:munge /run/munge
    [[ -s /etc/munge/munge.key ]] || { mungekey -c -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid"
}

start_mariadb() {
    pid_alive mariadb && return
    mkdir -p /run/mysqld "$STATE/log/mariadb" && chown mysql:mysql /run/mysqld "$STATE/log/mariadb"
    mariadbd --user=mysql --pid-file=/run/mysqld/mariadb.pid --log-error="$STATE/log/mariadb/error.log" \
        --socket=/run/mysqld/mysqld.sock >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb -u root -e "SELECT 1"
    cp /run/mysqld/mariadb.pid "$STATE/mariadb.pid"
    mariadb -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'gbml-ci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
    pid_alive slurmdbd || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    pid_alive slurmctld || slurmctld
    pid_alive slurmd || slurmd
    wait_for 60 slurmctld scontrol ping
    sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description=gbml organization=gbml >/dev/null 2>&1 || true
    sacctmgr -i -Q add user "$(id -un)" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 60 "the node to be idle" bash -c '[[ "$(sinfo -h -o %t)" == idle ]]'
}

cmd_start() {
    [[ $(id -u) -eq 0 ]] || { log "needs root (installs packages, starts daemons)"; exit 1; }
    install_packages
    mkdir -p "$STATE/log"
    pid_alive slurmctld || write_configs
    start_munge
    start_mariadb
    start_slurm
    log "cluster $CLUSTER up: $(sinfo -h -o '%P %D %t %G')"
}

cmd_stop() {
    for daemon in $DAEMONS; do
        if pid_alive "$daemon"; then
            local pid
            pid=$(cat "$STATE/$daemon.pid")     # read first: some daemons remove it as they exit
            kill "$pid"
            log "stopped $daemon ($pid)"
        fi
        rm -f "$STATE/$daemon.pid"
    done
}

cmd_status() {
    for daemon in $DAEMONS; do
        pid_alive "$daemon" && echo "$daemon: running ($(cat "$STATE/$daemon.pid"))" || echo "$daemon: stopped"
    done
    command -v sinfo >/dev/null && sinfo 2>/dev/null || true
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
