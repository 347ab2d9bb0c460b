# shellcheck shell=bash
# server.sh: stopping the server under test and waiting for its port, for
# the scripts beside it (compare.sh, soak.sh). Sourced, not run. The caller
# sets prog (its name, for messages) and server_pid (the server's PID, or
# empty).
# shellcheck disable=SC2154 # prog and server_pid come from the caller

# stop_server stops the server: TERM first, so that Kronos closes its store
# cleanly; KILL after 30 s.
stop_server() {
	[[ -n $server_pid ]] || return 0
	kill -TERM "$server_pid" 2>/dev/null || true
	for _ in $(seq 300); do
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

# wait_port waits up to 60 s for host:port to accept connections.
wait_port() {
	local host=${1%:*} port=${1##*:}
	for _ in $(seq 600); do
		if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
			return 0
		fi
		kill -0 "$server_pid" 2>/dev/null || { echo "$prog: the server exited" >&2; return 1; }
		sleep 0.1
	done
	echo "$prog: nothing listens on $1 after 60 s" >&2
	return 1
}
