#!/usr/bin/env bash
# soak.sh: the soak run of issue 12. One Kronos node (the embedded bbolt
# store, in a temporary directory) under a legitimate load alone (the clean
# run), then a fresh node under the same load beside abusive clients
# (silent, slow, oversized, non-reading, user-creating, garbage) for the
# same duration. Writes OUT/clean.json, OUT/soak.json, and OUT/summary.json
# and OUT/summary.md: the node's RSS against a stated bound, and the
# legitimate p99 of the soak against the clean run's.
#
#   cmd/kronos-bench/soak.sh --duration 10m --rss-bound-mib 256
#   cmd/kronos-bench/soak.sh --duration 1m --out soak-short -- --silent 500 --user-creating 1
#
# Arguments after -- go to both kronos-bench soak runs as they are (the
# abusive clients' counts among them; the clean run has none whatever they
# say). --server-flags go to both kronos serve runs: a node started with
# another --max-message-bytes needs the same -- --max-message-bytes.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: soak.sh [options] [-- kronos-bench soak flags]
  --duration D          length of each run's load (default 10m)
  --users N             legitimate users (default 200)
  --devices N           devices (connections) per user (default 10)
  --rate R              legitimate writes per second (default 200)
  --rss-bound-mib N     the stated bound on the node's RSS during the soak (default 256)
  --server-flags "..."  more flags for kronos serve, both runs
  --engine E            the node's connection engine (default epoll)
  --out DIR             results and logs (default soak-out)
EOF
}

duration=10m
users=200
devices=10
rate=200
bound=256
server_flags=""
engine=epoll
out=soak-out
bench_extra=()
while (($#)); do
	case "$1" in
	--duration) duration=$2; shift 2 ;;
	--users) users=$2; shift 2 ;;
	--devices) devices=$2; shift 2 ;;
	--rate) rate=$2; shift 2 ;;
	--rss-bound-mib) bound=$2; shift 2 ;;
	--server-flags) server_flags=$2; shift 2 ;;
	--engine) engine=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--) shift; bench_extra=("$@"); break ;;
	-h | --help) usage; exit 0 ;;
	*) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

addr=127.0.0.1:5056
admin=127.0.0.1:9096

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d -t kronos-soak.XXXXXX)
server_pid=""

prog=soak.sh
# shellcheck source=cmd/kronos-bench/server.sh
source "$root/cmd/kronos-bench/server.sh"
trap 'stop_server; rm -rf "$work"' EXIT


# The node holds the legitimate and the abusive connections; the tool
# holds the abusive ones in one process.
ulimit -n "$(ulimit -Hn)"

echo "building kronos and kronos-bench" >&2
(cd "$root" && go build -o "$work/kronos" ./cmd/kronos && go build -o "$work/kronos-bench" ./cmd/kronos-bench)

mkdir -p "$out"
run_one() { # name, then kronos-bench flags
	local name=$1
	shift
	# shellcheck disable=SC2086 # server_flags is a list of flags
	"$work/kronos" serve --engine "$engine" --listen "$addr" --admin-listen "$admin" \
		--store "bolt:$work/data-$name/kronos.db" --log-level warn $server_flags >"$out/$name.server.log" 2>&1 &
	server_pid=$!
	wait_port "$addr"
	echo "== $name ($duration)" >&2
	local status=0
	"$work/kronos-bench" soak --addr "$addr" --admin "$admin" --server-pid "$server_pid" --users "$users" --devices "$devices" \
		--rate "$rate" --duration "$duration" --label "$name" --out "$out/$name.json" \
		"${bench_extra[@]}" "$@" 2>"$out/$name.bench.log" || status=$?
	stop_server
	rm -rf "$work/data-$name"
	if ((status != 0)); then
		echo "soak.sh: $name reported errors (see $out/$name.bench.log)" >&2
		[[ -s $out/$name.json ]] || exit 1
	fi
}

run_one clean --clean
run_one soak

"$work/kronos-bench" soak-report --clean "$out/clean.json" --soak "$out/soak.json" \
	--rss-bound-mib "$bound" --out "$out/summary"
echo >&2
echo "table: $out/summary.md, results: $out/*.json, logs: $out/*.log" >&2
cat "$out/summary.md"
