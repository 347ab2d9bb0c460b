#!/usr/bin/env bash
# compare.sh: Kronos and Centrifugo side by side, under the same load.
#
# Builds kronos and kronos-bench from this checkout, installs Centrifugo
# with `go install`, then runs the two servers in turn (Kronos, Centrifugo,
# Kronos, Centrifugo, ...) for each round and write rate, each on its own
# ports, started fresh and stopped after its run. kronos-bench drives both
# with the same users, devices and write pattern. At the end it writes one
# table (OUT/compare.md: the medians of the rounds) and one chart
# (OUT/compare.png).
#
#   cmd/kronos-bench/compare.sh --rounds 3 --rates "3000 6000 10000"
#   cmd/kronos-bench/compare.sh --users 50 --devices 5 --rates "200 400" --rounds 1 \
#       --duration 3s -- --steps 2 --idle 1s
#
# Arguments after -- go to every kronos-bench run as they are.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: compare.sh [options] [-- kronos-bench flags]
  --rounds N            rounds; each runs every rate on both servers (default 3)
  --rates "R1 R2 ..."   writes per second asked (default "3000 6000 10000")
  --users N             users (default 1900)
  --devices N           devices (connections) per user (default 10)
  --duration D          length of each load phase (default 10s)
  --out DIR             results, logs, table and chart (default compare-out)
  --centrifugo PATH     use this centrifugo binary instead of installing it
  --go-install-timeout D  bound on the Centrifugo install (default 30m)
  --kronos-flags "F ..."   more flags for kronos serve, e.g. "--fanout-shards 2"
  --kronos-memory-limit S  Kronos's --memory-limit (default 1GiB, about what
                        Centrifugo's memory engine holds at 19,000 connections)
EOF
}

rounds=3
rates="3000 6000 10000"
users=1900
devices=10
duration=10s
out=compare-out
centrifugo=""
install_timeout=30m
kronos_memory=1GiB
kronos_flags=""
bench_extra=()
while (($#)); do
	case "$1" in
	--rounds) rounds=$2; shift 2 ;;
	--rates) rates=$2; shift 2 ;;
	--users) users=$2; shift 2 ;;
	--devices) devices=$2; shift 2 ;;
	--duration) duration=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--centrifugo) centrifugo=$2; shift 2 ;;
	--go-install-timeout) install_timeout=$2; shift 2 ;;
	--kronos-memory-limit) kronos_memory=$2; shift 2 ;;
	--kronos-flags) kronos_flags=$2; shift 2 ;;
	--) shift; bench_extra=("$@"); break ;;
	-h | --help) usage; exit 0 ;;
	*) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

# The version compared: centrifugoModule in centrifugo_config.go and
# docs/benchmarks.md name it too.
centrifugo_module=github.com/centrifugal/centrifugo/v6@v6.9.1

# Ports: each server its own, so that a server still closing cannot take
# the next run's connections.
kronos_addr=127.0.0.1:5055
kronos_admin=127.0.0.1:9095
centrifugo_port=8055
centrifugo_internal_port=9195

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d -t kronos-compare.XXXXXX)
server_pid=""

prog=compare.sh
# shellcheck source=cmd/kronos-bench/server.sh
source "$root/cmd/kronos-bench/server.sh"
trap 'stop_server; rm -rf "$work"' EXIT


# Each server holds every connection plus a few files: 19,000 connections
# need the soft limit raised to the hard one.
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < users * devices + 500)); then
	echo "compare.sh: $((users * devices)) connections need more than ulimit -n $(ulimit -n)" >&2
	exit 1
fi

echo "building kronos and kronos-bench" >&2
(cd "$root" && go build -o "$work/kronos" ./cmd/kronos && go build -o "$work/kronos-bench" ./cmd/kronos-bench)
if [[ -z $centrifugo ]]; then
	echo "installing $centrifugo_module (several minutes on a cold cache)" >&2
	# Outside the workspace: go install pkg@version builds the module alone.
	(cd "$work" && GOWORK=off GOBIN="$work/bin" timeout "$install_timeout" go install "$centrifugo_module")
	centrifugo=$work/bin/centrifugo
fi

# A fresh secret per comparison: the tokens are signed with it.
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')

# Centrifugo's configuration: memory engine, HMAC tokens, the kronos
# namespace, limits, metrics (centrifugoConfig in centrifugo_config.go says
# what and why).
"$work/kronos-bench" centrifugo-config --secret "$secret" --port "$centrifugo_port" \
	--internal-port "$centrifugo_internal_port" >"$work/centrifugo.json"
"$centrifugo" checkconfig -c "$work/centrifugo.json" >/dev/null

mkdir -p "$out/runs" "$out/logs"
rm -f "$out"/runs/*.json

run_one() { # server rate round
	local server=$1 rate=$2 round=$3
	local name=$server-$rate-r$round
	local args=(--users "$users" --devices "$devices" --rate "$rate" --duration "$duration"
		--label "$server, $rate writes/s, round $round" --out "$out/runs/$name.json")
	case $server in
	kronos)
		local extra=()
		read -r -a extra <<<"$kronos_flags"
		"$work/kronos" serve --listen "$kronos_addr" --admin-listen "$kronos_admin" \
			--memory-limit "$kronos_memory" \
			--store "bolt:$work/data-$name/kronos.db" "${extra[@]}" >"$out/logs/$name.server.log" 2>&1 &
		server_pid=$!
		wait_port "$kronos_addr"
		args+=(--addr "$kronos_addr" --admin "$kronos_admin")
		;;
	centrifugo)
		"$centrifugo" -c "$work/centrifugo.json" >"$out/logs/$name.server.log" 2>&1 &
		server_pid=$!
		wait_port "127.0.0.1:$centrifugo_port"
		args+=(--server centrifugo --centrifugo-secret "$secret"
			--addr "127.0.0.1:$centrifugo_port" --admin "127.0.0.1:$centrifugo_internal_port")
		;;
	esac
	echo "== $name" >&2
	# A run with errors still writes its results; the table counts them.
	if ! "$work/kronos-bench" "${args[@]}" "${bench_extra[@]}" 2>"$out/logs/$name.bench.log"; then
		echo "compare.sh: $name reported errors (see $out/logs/$name.bench.log)" >&2
	fi
	stop_server
	rm -rf "$work/data-$name"
}

for round in $(seq "$rounds"); do
	for rate in $rates; do
		run_one kronos "$rate" "$round"
		run_one centrifugo "$rate" "$round"
	done
done

"$work/kronos-bench" compare-report --in "$out/runs" --out "$out/compare"
echo >&2
echo "table: $out/compare.md, chart: $out/compare.png, runs: $out/runs, logs: $out/logs" >&2
cat "$out/compare.md"
