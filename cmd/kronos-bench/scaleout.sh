#!/usr/bin/env bash
# scaleout.sh: three Kronos nodes (or --nodes N) on PostgreSQL, each in a
# network namespace of its own, behind a kernel TCP balancer, loaded by
# kronos-bench from the root namespace. Writes per-node connections, RSS,
# notifications/s and CPU, and the bench's latency, as JSON and markdown.
#
#   # the full run (57,000 connections: 19,000 per node), on a quiet machine:
#   cmd/kronos-bench/scaleout.sh --users 5700 --devices 10 --rate 2000 --duration 30s \
#       --label "3 nodes, 57,000 connections, 2,000 writes/s" --out scaleout-57k-2000
#   # a validation run:
#   cmd/kronos-bench/scaleout.sh --users 300 --devices 10 --rate 100 --duration 30s --out /tmp/scaleout-small
#
# Topology (SUBNET defaults to 198.18.5; cmd/kronos's netns test uses 198.18.0):
#
#   root namespace                                   namespace ksc-ID-i (i = 0..N-1)
#   kronos-bench workers, bound to SUBNET.101..      kronos serve
#     (--sources: one per 1,000s of connections)       client  SUBNET.(11+i):5000
#   connect to the virtual IP SUBNET.100:5000          admin   SUBNET.(11+i):9090
#     → nat OUTPUT: DNAT, round robin (statistic nth)  gossip  SUBNET.(11+i):7946
#   bridge kscID, SUBNET.1/24 ── veth ────────────── eth0
#   PostgreSQL forward SUBNET.1:15432 → the --pg server
#
# The balancer is a netfilter DNAT: it holds no socket, so it costs no
# descriptor and no process per connection, only a conntrack entry. Each node
# is its own process with its own descriptor limit (the hard limit of this
# shell). The nodes share a fresh PostgreSQL schema, dropped at the end.
#
# Needs root, iproute2, iptables, psql and curl. Everything it creates
# (namespaces, bridge, addresses, the nat chain and its jump, processes, the
# schema, and a conntrack limit it had to raise) is removed on exit, also on
# failure or Ctrl-C.
#
# Arguments after -- go to kronos-bench as they are.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: scaleout.sh [options] [-- kronos-bench flags]
  --nodes N           nodes, each in its own namespace (default 3)
  --users N           users (default 5700)
  --devices N         devices (connections) per user (default 10)
  --rate R            writes per second in the load phase (default 2000)
  --duration D        length of the load phase (default 30s)
  --sources N         client source addresses on the bridge (default 16)
  --subnet A.B.C      the /24 of the bridge, nodes and virtual IP (default 198.18.5)
  --pg URL            PostgreSQL to create the schema in (default
                      postgres://postgres@127.0.0.1:5432/test?sslmode=disable)
  --pool N            each node's pool_max_conns (default 8)
  --rebalance         keep the nodes' rebalancing on (default: off, see below)
  --node-flags "..."  more flags for every `kronos serve` (split on spaces)
  --label TEXT        the run's name in the results
  --out DIR           results, snapshots and logs (default scaleout-out)

Rebalancing is off by default (--rebalance-threshold -1): the balancer
spreads connections evenly, and during a fast ramp a node compares its own
live count with its peers' gossiped counts, which lag, and sheds clients
that the bench does not bring back (a validation run lost 5% so).
EOF
}

nodes=3
users=5700
devices=10
rate=2000
duration=30s
nsources=16
subnet=198.18.5
pg="postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
pool=8
label=""
out=scaleout-out
rebalance=(--rebalance-threshold -1)
node_flags=""
bench_extra=()
while (($#)); do
	case "$1" in
	--nodes) nodes=$2; shift 2 ;;
	--users) users=$2; shift 2 ;;
	--devices) devices=$2; shift 2 ;;
	--rate) rate=$2; shift 2 ;;
	--duration) duration=$2; shift 2 ;;
	--sources) nsources=$2; shift 2 ;;
	--subnet) subnet=$2; shift 2 ;;
	--pg) pg=$2; shift 2 ;;
	--pool) pool=$2; shift 2 ;;
	--rebalance) rebalance=(); shift ;;
	--node-flags) node_flags=$2; shift 2 ;;
	--label) label=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--) shift; bench_extra=("$@"); break ;;
	-h | --help) usage; exit 0 ;;
	*) echo "scaleout.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

say() { echo "scaleout.sh: $*" >&2; }
die() { say "$*"; exit 1; }

((EUID == 0)) || die "needs root (network namespaces, a bridge, iptables)"
for tool in ip iptables psql curl go; do
	command -v "$tool" >/dev/null || die "needs $tool (Debian: iproute2, iptables, postgresql-client, curl)"
done
((nodes >= 1 && nodes <= 9)) || die "--nodes: 1 to 9"
((nsources >= 1 && nsources <= 99)) || die "--sources: 1 to 99"
[[ $subnet =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet: three octets, e.g. 198.18.5"
conns=$((users * devices))
per_node=$(((conns + nodes - 1) / nodes))
label=${label:-"$nodes nodes on PostgreSQL, $conns connections, $rate writes/s"}

id=$(od -An -tx1 -N2 /dev/urandom | tr -d ' \n')
bridge=ksc$id
chain=KRONOS-SCALEOUT-$id
gw=$subnet.1
vip=$subnet.100
port=5000
schema=kronos_scaleout_$id
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d -t kronos-scaleout.XXXXXX)
mkdir -p "$out/metrics" "$out/logs"
out=$(cd "$out" && pwd)

ns=() ips=() node_pids=()
for ((i = 0; i < nodes; i++)); do
	ns+=("ksc-$id-$i")
	ips+=("$subnet.$((11 + i))")
done
sources=""
for ((j = 0; j < nsources; j++)); do
	sources+="${sources:+,}$subnet.$((101 + j))"
done

# --- cleanup: everything created below, in reverse, each step on its own ---
created_bridge="" created_chain="" created_jump="" created_schema="" fwd_pid="" bench_pid="" conntrack_was=""
# shellcheck disable=SC2317 # run by the trap
cleanup() {
	set +e
	if [[ -n $bench_pid ]] && kill -0 "$bench_pid" 2>/dev/null; then
		pkill -TERM -P "$bench_pid" 2>/dev/null # its worker processes, by parent id
		kill -TERM "$bench_pid" 2>/dev/null
		wait "$bench_pid" 2>/dev/null
	fi
	for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${node_pids[@]}"; do
		for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [[ -n $created_chain ]]; then
		[[ -n $created_jump ]] && iptables -t nat -D OUTPUT -d "$vip/32" -p tcp --dport "$port" -m comment --comment "kronos scaleout.sh $id" -j "$chain"
		iptables -t nat -F "$chain"
		iptables -t nat -X "$chain"
	fi
	if [[ -n $created_schema ]]; then
		psql -q "$pg" -c "SET client_min_messages TO warning" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null
	fi
	if [[ -n $fwd_pid ]]; then kill -TERM "$fwd_pid" 2>/dev/null; wait "$fwd_pid" 2>/dev/null; fi
	for n in "${ns[@]}"; do
		ip netns list | grep -qw "^$n" && ip netns del "$n"
	done
	[[ -n $created_bridge ]] && ip link del "$bridge" # its addresses and veth ends go with it
	if [[ -n $conntrack_was ]]; then
		sysctl -qw "net.netfilter.nf_conntrack_max=$conntrack_was"
		say "nf_conntrack_max restored to $conntrack_was"
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- host limits: say what a run of this size needs, and set what it must ---
if ip -4 addr show | grep -q "inet $subnet\."; then
	die "$subnet.0/24 is already on an interface (another run?); pick another --subnet"
fi
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < per_node + 300)); then
	die "a node holds about $per_node connections; the descriptor limit is $(ulimit -n): use more --nodes or raise the hard limit"
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
ports=$((port_hi - port_lo + 1))
per_source=$(((conns + nsources - 1) / nsources))
# The storm leaves each source's old connections in TIME_WAIT (60 s) while
# the same number connect again, all to the one virtual IP and port.
if ((2 * per_source > ports)); then
	die "each source address needs about $((2 * per_source)) ports to the virtual IP (its connections, and as many in TIME_WAIT after the storm) but ip_local_port_range has $ports: use more --sources"
fi
# Established entries, the storm's TIME_WAIT entries (120 s in conntrack),
# what the host already tracks, and a margin.
ct_used=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0)
need_ct=$((ct_used + 2 * conns + 10000))
ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 0)
if ((ct_max < need_ct)); then
	conntrack_was=$ct_max
	sysctl -qw "net.netfilter.nf_conntrack_max=$need_ct"
	say "raised net.netfilter.nf_conntrack_max from $ct_max to $need_ct for this run (restored at exit)"
fi
{
	echo "connections $conns, about $per_node per node, $per_source per source address ($nsources sources)"
	echo "descriptor limit (each node, each bench worker) $(ulimit -n)"
	echo "ip_local_port_range $port_lo $port_hi ($ports ports per source address and destination)"
	echo "nf_conntrack_max $(cat /proc/sys/net/netfilter/nf_conntrack_max) (needed about $need_ct), in use $(cat /proc/sys/net/netfilter/nf_conntrack_count)"
	echo "fs.file-max $(cat /proc/sys/fs/file-max), in use $(cut -f1 /proc/sys/fs/file-nr)"
	echo "nodes' namespaces: net.core.somaxconn and net.ipv4.tcp_max_syn_backlog set to 65535 (per namespace)"
	echo "cpus $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/host.txt" >&2

# --- build ---
say "building kronos and kronos-bench"
(cd "$root" && go build -o "$work/kronos" ./cmd/kronos && go build -o "$work/kronos-bench" ./cmd/kronos-bench)
# The forwarder is the same binary under another name, so that its CPU is
# not counted as the bench's.
cp "$work/kronos-bench" "$work/kronos-pgfwd"

# --- network: a bridge, source addresses, one namespace per node ---
ip link add "$bridge" type bridge
created_bridge=1
ip addr add "$gw/24" dev "$bridge"
for s in ${sources//,/ }; do ip addr add "$s/32" dev "$bridge"; done
ip link set "$bridge" up
for ((i = 0; i < nodes; i++)); do
	ip netns add "${ns[i]}"
	ip link add "kscv$id$i" type veth peer name eth0 netns "${ns[i]}"
	ip link set "kscv$id$i" master "$bridge"
	ip link set "kscv$id$i" up
	ip -n "${ns[i]}" addr add "${ips[i]}/24" dev eth0
	ip -n "${ns[i]}" link set eth0 up
	ip -n "${ns[i]}" link set lo up
	ip netns exec "${ns[i]}" sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
done

# --- the balancer: DNAT from the virtual IP, round robin over the nodes ---
iptables -t nat -N "$chain"
created_chain=1
for ((i = 0; i < nodes; i++)); do
	if ((i < nodes - 1)); then
		# the nth of every (nodes - i) connections still unmatched: round robin
		iptables -t nat -A "$chain" -p tcp -m statistic --mode nth --every $((nodes - i)) --packet 0 \
			-j DNAT --to-destination "${ips[i]}:$port"
	else
		iptables -t nat -A "$chain" -p tcp -j DNAT --to-destination "${ips[i]}:$port"
	fi
done
iptables -t nat -A OUTPUT -d "$vip/32" -p tcp --dport "$port" -m comment --comment "kronos scaleout.sh $id" -j "$chain"
created_jump=1

# --- PostgreSQL: a fresh schema, reached from the namespaces through a forward ---
[[ $pg =~ ^(postgres(ql)?://)([^@/]*@)?([^/?]+)(/[^?]*)?(\?.*)?$ ]] || die "--pg: want postgres://[user@]host:port/db[?params]"
pg_hostport=${BASH_REMATCH[4]}
[[ $pg_hostport == *:* ]] || pg_hostport+=":5432"
psql -q "$pg" -c "CREATE SCHEMA $schema" >/dev/null
created_schema=1
"$work/kronos-pgfwd" scaleout-forward "$gw:15432" "$pg_hostport" 2>"$out/logs/pgfwd.log" &
fwd_pid=$!
params=${BASH_REMATCH[6]:-?}
[[ $params == "?" ]] || params+="&"
store="${BASH_REMATCH[1]}${BASH_REMATCH[3]}$gw:15432${BASH_REMATCH[5]}${params}search_path=$schema&pool_max_conns=$pool"

# --- the nodes ---
node_extra=()
[[ -z $node_flags ]] || read -r -a node_extra <<<"$node_flags"
KRONOS_CLUSTER_KEY=$(head -c32 /dev/urandom | base64)
KRONOS_STORE=$store
export KRONOS_CLUSTER_KEY KRONOS_STORE # the environment, not argv: out of ps
for ((i = 0; i < nodes; i++)); do
	ip netns exec "${ns[i]}" "$work/kronos" serve \
		--listen "${ips[i]}:$port" --admin-listen "${ips[i]}:9090" \
		--cluster-bind "${ips[i]}:7946" --node-name "scaleout-$i" --join "${ips[0]}:7946" \
		--rejoin-interval 2s --drain-period 2s --shutdown-timeout 10s \
		--log-level warn "${rebalance[@]}" "${node_extra[@]}" >"$out/logs/node$i.log" 2>&1 &
	node_pids+=($!)
done
say "waiting for $nodes ready nodes that see each other"
for ((t = 0; ; t++)); do
	ok=0
	for ((i = 0; i < nodes; i++)); do
		kill -0 "${node_pids[i]}" 2>/dev/null || die "node $i exited: $(tail -5 "$out/logs/node$i.log")"
		if curl -sf -m 2 "http://${ips[i]}:9090/readyz" >/dev/null &&
			[[ $(curl -sf -m 2 "http://${ips[i]}:9090/cluster" | grep -o '"status":"alive"' | wc -l) -eq $nodes ]]; then
			ok=$((ok + 1))
		fi
	done
	((ok == nodes)) && break
	((t < 600)) || die "the cluster did not form in 60 s"
	sleep 0.1
done
curl -sf "http://${ips[0]}:9090/cluster" >"$out/cluster.json"

# --- snapshots: each node's /metrics and the host's CPU counters ---
proc_ticks() { # CPU ticks of the processes named $1, by their /proc stat
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v n="($1)" '$2 == n { s += $14 + $15 } END { print s + 0 }'
}
snap() {
	local phase=$1
	{
		echo "time $(date +%s.%N)"
		head -1 /proc/stat
		echo "clk_tck $(getconf CLK_TCK)"
		for p in postgres kronos-bench kronos-pgfwd kronos; do echo "ticks $p $(proc_ticks "$p")"; done
	} >"$out/metrics/$phase-host.txt"
	for ((i = 0; i < nodes; i++)); do
		curl -sf -m 5 "http://${ips[i]}:9090/metrics" >"$out/metrics/$phase-node$i.prom" || say "no /metrics from node $i at $phase"
	done
}
# watch_phases reads the bench's progress lines and snapshots at its phases.
watch_phases() {
	local line
	while IFS= read -r line; do
		printf '%s\n' "$line" >&2
		printf '%s\n' "$line" >>"$out/logs/bench.log"
		case $line in
		"load:"*) snap idle ;;
		"reconnect storm"*) snap loaded ;;
		esac
	done
}

snap before
say "kronos-bench: $conns connections to $vip:$port from $nsources sources, $rate writes/s for $duration"
# The bench's stderr (its progress) goes through watch_phases, by a FIFO so that
# the bench's pid stays in this shell for the cleanup; its stdout (the
# summary) goes to ours.
mkfifo "$work/progress"
watch_phases <"$work/progress" &
watch_pid=$!
"$work/kronos-bench" --addr "$vip:$port" --admin "${ips[0]}:9090" --sources "$sources" \
	--users "$users" --devices "$devices" --rate "$rate" --duration "$duration" \
	--label "$label" --out "$out/bench.json" "${bench_extra[@]}" 2>"$work/progress" &
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
wait "$watch_pid" || true
[[ -f $out/metrics/loaded-host.txt ]] || snap loaded # no storm: the load ended with the bench
snap after
((status == 0)) || say "kronos-bench exited with status $status (see above); reporting what it wrote"
[[ -f $out/bench.json ]] || die "kronos-bench wrote no results"

topology="$nodes nodes, each in its own network namespace, on one PostgreSQL (schema $schema, through a forward); clients from the root namespace to a virtual IP, DNAT round robin (iptables statistic nth) to the nodes; $(nproc) CPUs shared by all."
"$work/kronos-bench" scaleout-report --dir "$out" --nodes "$nodes" --topology "$topology"
say "results: $out/scaleout.md, $out/scaleout.json, $out/bench.json; snapshots in $out/metrics, logs in $out/logs"
exit "$status"
