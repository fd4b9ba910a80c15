#!/usr/bin/env bash
# Cluster services for the tests marked `cluster`: a single-node SLURM (munge, slurmctld, slurmd).
#
#   .ci/services.sh install   apt-get install Debian's slurm-wlm and munge (needs root)
#   .ci/services.sh start     write /etc/slurm/slurm.conf for this machine, start the daemons, wait for `sinfo`
#   .ci/services.sh stop      stop what `start` started
#   .ci/services.sh status    print the node state
#
# The node is this machine with its real CPU count and memory (`slurmd -C`); no cgroups
# (proctrack/linuxproc, task/none), no accounting database. Ray needs no service here: the
# Ray tests start and stop their own local cluster (`ray start --head`).
set -euo pipefail

STATE=${LRPFLOW_SLURM_STATE:-/var/spool/lrpflow-slurm}
CONF=/etc/slurm/slurm.conf

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        echo "slurm and munge are installed"; return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local node cpus mem
    node=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm
    cat >"$CONF" <<EOF
# written by lrpflow's .ci/services.sh: one node, this machine, no cgroups, no accounting
ClusterName=lrpflow-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    fi
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
    echo "munged did not start" >&2; return 1
}

running() {  # running FILE: is the daemon whose pid the file holds alive?
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    local t0=$SECONDS
    write_conf
    start_munge
    running "$STATE/slurmctld.pid" || slurmctld
    running "$STATE/slurmd.pid" || slurmd
    local node; node=$(hostname -s)
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
        case "$state" in
            idle*) echo "slurm: node $node idle after $((SECONDS - t0)) s"; return ;;
            down*|drain*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    echo "slurm did not come up (node state: ${state:-none})" >&2
    tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    return 1
}

stop_pid() {  # stop_pid FILE: end the daemon whose pid the file holds
    local f=$1
    [ -s "$f" ] || return 0
    local pid; pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
}

stop() {
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
    stop_pid /run/munge/munged.pid
    echo "slurm and munge stopped"
}

status() { sinfo; }

"${1:?usage: services.sh install|start|stop|status}"
