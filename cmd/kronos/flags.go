package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kronos-sync/kronos-server/cluster"
	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/check"
	"github.com/kronos-sync/kronos-server/node"
)

type config struct {
	cluster         cluster.Options
	join            string
	clusterKey      string
	store           string
	storeOpts       feed.Options
	adminListen     string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
	memoryLimit     int64 // --memory-limit: bytes; 0 the cgroup's limit; negative Go's defaults
	gomaxprocs      int   // --gomaxprocs: 0 twice Go's default; negative Go's default
	node            node.Options
}

var errHelp = errors.New("help requested")

// envName is the environment variable of a flag: --max-conns → KRONOS_MAX_CONNS.
func envName(flagName string) string {
	return "KRONOS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagOf names the flag of each options field the libraries' Validate
// methods may report, so that a problem is told in the user's words.
var flagOf = map[string]string{
	"Conn.Engine":              "--engine",
	"Conn.Workers":             "--workers",
	"Conn.MaxMessageBytes":     "--max-message-bytes",
	"Conn.MaxQueueBytes":       "--max-queue-bytes",
	"Conn.InputBudgetBytes":    "--input-budget-bytes",
	"Conn.OutputBudgetBytes":   "--output-budget-bytes",
	"Conn.MaxConns":            "--max-conns",
	"Conn.ReadTimeout":         "--read-timeout",
	"Conn.TLSCertFile":         "--tls-cert",
	"Conn.TLSRequired":         "--tls-required",
	"Limits.MaxTasksPerUser":   "--max-tasks-per-user",
	"Limits.MaxDevicesPerUser": "--max-devices-per-user",
	"Limits.MaxTaskBytes":      "--max-task-bytes",
	"RateLimit":                "--rate-limit",
	"RateBurst":                "--rate-burst",
	"StoreTimeout":             "--store-timeout",
	"DrainPeriod":              "--drain-period",
	"RebalanceThreshold":       "--rebalance-threshold",
	"RebalanceRate":            "--rebalance-rate",
	"DeviceTouchInterval":      "--device-touch-interval",
	"FanoutShards":             "--fanout-shards",
	"Store.ChangeLogRetention": "--changelog-retention",
	"Store.ChangeLogMaxRows":   "--changelog-max-rows",
	"Cluster.Bind":             "--cluster-bind",
	"Cluster.Advertise":        "--cluster-advertise",
	"Cluster.Key":              "--cluster-key",
	"Cluster.Insecure":         "--cluster-insecure",
	"Cluster.RejoinInterval":   "--rejoin-interval",
}

// describe tells one problem of a Validate in terms of flags.
func describe(err error) string {
	var p *check.Problem
	if errors.As(err, &p) {
		if name, ok := flagOf[p.Field]; ok {
			return fmt.Sprintf("%s %v: %s", name, p.Value, p.Rule)
		}
	}
	return err.Error()
}

// parseServeFlags reads flags; a flag not given takes its KRONOS_* variable,
// then its default. Every bad value is reported, not just the first.
func parseServeFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("kronos serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &cfg.node
	fs.StringVar(&o.Conn.Listen, "listen", ":5000", "client address: raw TCP and WebSocket on one port")
	fs.StringVar(&cfg.adminListen, "admin-listen", "127.0.0.1:9090", "admin HTTP address: /healthz, /readyz, /metrics")
	fs.StringVar(&cfg.store, "store", "bolt:kronos-data/kronos.db", "store URL: bolt:PATH, postgres://… or rethinkdb://…")
	fs.DurationVar(&cfg.storeOpts.ChangeLogRetention, "changelog-retention", 24*time.Hour, "shared stores: how long the change log is kept")
	fs.IntVar(&cfg.storeOpts.ChangeLogMaxRows, "changelog-max-rows", 1_000_000, "shared stores: most change log rows kept")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&cfg.logFormat, "log-format", "json", "log format: json or console")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 45*time.Second, "how long a stop may take (more than --drain-period)")
	fs.StringVar(&cfg.join, "join", "", "cluster: comma-separated host:port or DNS names of nodes to join (turns clustering on)")
	fs.StringVar(&cfg.cluster.Bind, "cluster-bind", ":7946", "cluster: gossip address, UDP and TCP")
	fs.StringVar(&cfg.cluster.Advertise, "cluster-advertise", "", "cluster: address other nodes reach this one at (default: from --cluster-bind)")
	fs.StringVar(&cfg.cluster.NodeName, "node-name", "", "cluster: unique node name (default: hostname and a random suffix)")
	fs.StringVar(&cfg.clusterKey, "cluster-key", "", "cluster: gossip encryption key, base64 of 16, 24 or 32 random bytes (required with --join)")
	fs.BoolVar(&cfg.cluster.Insecure, "cluster-insecure", false, "cluster: allow --join without --cluster-key, on a network only Kronos nodes reach (gossip is then neither encrypted nor authenticated)")
	fs.DurationVar(&cfg.cluster.RejoinInterval, "rejoin-interval", 30*time.Second, "cluster: how often --join names are resolved and joined again")
	fs.DurationVar(&o.DrainPeriod, "drain-period", 30*time.Second, "cluster: spread the closing of clients over this on a stop")
	fs.Float64Var(&o.RebalanceThreshold, "rebalance-threshold", 0.2, "cluster: shed connections when above the mean by this fraction (negative: off; 0: the default)")
	fs.IntVar(&o.RebalanceRate, "rebalance-rate", 50, "cluster: most connections shed per second")
	fs.StringVar(&o.Conn.Engine, "engine", "epoll", "connection engine: epoll, or goroutine (one reader and writer goroutine per connection; a baseline)")
	fs.IntVar(&o.Conn.Workers, "workers", 256, "goroutines that read sockets and run requests")
	fs.IntVar(&o.Conn.MaxConns, "max-conns", 0, "refuse connections past this count (0: the descriptor limit less 256; negative: no limit)")
	fs.IntVar(&o.Conn.MaxConnsPerIP, "max-conns-per-ip", 0, "refuse connections from one client address past this count (0: no limit)")
	fs.DurationVar(&o.Conn.HandshakeTimeout, "handshake-timeout", 10*time.Second, "close a connection that sends no request line or JSON within this")
	fs.DurationVar(&o.Conn.LoginTimeout, "login-timeout", 60*time.Second, "close a connection not logged in within this (negative: never)")
	fs.DurationVar(&o.Conn.WriteTimeout, "write-timeout", 10*time.Second, "drop a connection that takes none of its queued output for this long")
	fs.IntVar(&o.Conn.MaxMessageBytes, "max-message-bytes", 4<<20, "largest request")
	fs.IntVar(&o.Conn.MaxQueueBytes, "max-queue-bytes", 8<<20, "largest unsent output per connection before it is dropped")
	fs.IntVar(&o.Conn.InputBudgetBytes, "input-budget-bytes", 256<<20, "node-wide bound on memory held for messages not yet received whole; past it the connections holding the most are closed first (negative: no bound)")
	fs.IntVar(&o.Conn.OutputBudgetBytes, "output-budget-bytes", 1<<30, "node-wide bound on queued output, a read-all answer shared by a user's devices counted once; past it the largest queues are dropped first (negative: no bound; keep it above the largest read-all answer, --max-tasks-per-user × --max-task-bytes)")
	fs.DurationVar(&o.Conn.ReadTimeout, "read-timeout", 30*time.Second, "time allowed to finish a started message")
	fs.DurationVar(&o.Conn.PingInterval, "ws-ping-interval", 30*time.Second, "ping a WebSocket idle this long, for proxies that drop idle connections (negative: never)")
	fs.IntVar(&o.Limits.MaxTasksPerUser, "max-tasks-per-user", 10000, "most tasks one user may store")
	fs.IntVar(&o.Limits.MaxDevicesPerUser, "max-devices-per-user", 50, "most devices one user may register")
	fs.DurationVar(&o.DeviceTouchInterval, "device-touch-interval", 10*time.Minute,
		"how often a node refreshes the last-seen time of its connected devices; at --max-devices-per-user a new device retires one unseen for 3 times this")
	fs.IntVar(&o.Limits.MaxTaskBytes, "max-task-bytes", 64<<10, "largest task, as compact JSON")
	fs.Float64Var(&o.RateLimit, "rate-limit", 100, "requests per second per connection, sustained")
	fs.IntVar(&o.RateBurst, "rate-burst", 200, "requests one connection may send at once")
	fs.DurationVar(&o.StoreTimeout, "store-timeout", 10*time.Second, "time allowed for one store call")
	fs.IntVar(&o.NewUsersPerMinute, "new-users-per-minute", 0, "users one client address may create per minute (0: no limit)")
	fs.BoolVar(&o.AdminPprof, "admin-pprof", false, "serve /debug/pprof on the admin port")
	memoryLimit := fs.String("memory-limit", "0", "memory the node may use, e.g. 2GiB: the garbage collector lets the heap grow to half of it between collections and treats it as a soft ceiling (0: 80% of the container's cgroup limit, if any; negative: Go's defaults)")
	fs.IntVar(&o.FanoutShards, "fanout-shards", 0, "goroutines that write notifications, each user's through one (0: one per P)")
	fs.IntVar(&cfg.gomaxprocs, "gomaxprocs", 0, "Ps running Go code (GOMAXPROCS; the GOMAXPROCS environment variable wins): 0 twice the CPUs the node may use, so that goroutines blocked in system calls leave room for the rest; negative: Go's default, one per CPU")
	fs.StringVar(&o.Conn.TLSCertFile, "tls-cert", "", "TLS on the client port: certificate chain (PEM), reloaded when the file changes; plain connections stay allowed unless --tls-required")
	fs.StringVar(&o.Conn.TLSKeyFile, "tls-key", "", "TLS on the client port: private key (PEM), reloaded with --tls-cert")
	fs.BoolVar(&o.Conn.TLSRequired, "tls-required", false, "refuse plain connections on the client port (needs --tls-cert and --tls-key)")
	fs.BoolVar(&o.Conn.ProxyProtocol, "proxy-protocol", false, "expect a PROXY protocol header (v1 or v2) from the load balancer on every client connection, and take the client's address from it")

	var problems []string
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				problems = append(problems, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err))
			}
		}
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments: %q", fs.Args()))
	}
	if n, err := parseBytes(*memoryLimit); err != nil {
		problems = append(problems, "--memory-limit: "+err.Error())
	} else {
		cfg.memoryLimit = n
	}
	for _, j := range strings.Split(cfg.join, ",") {
		if j = strings.TrimSpace(j); j != "" {
			cfg.cluster.Join = append(cfg.cluster.Join, j)
		}
	}
	if cfg.clusterKey != "" {
		key, err := base64.StdEncoding.DecodeString(cfg.clusterKey)
		if err != nil {
			problems = append(problems, "--cluster-key: want base64 of 16, 24 or 32 bytes")
		}
		cfg.cluster.Key = key
	}
	if len(cfg.cluster.Join) > 0 && cfg.clusterKey == "" && !cfg.cluster.Insecure {
		problems = append(problems, "--join needs a gossip key: set --cluster-key (KRONOS_CLUSTER_KEY) to base64 of 32 random bytes "+
			"(head -c32 /dev/urandom | base64), the same on every node; or set --cluster-insecure (KRONOS_CLUSTER_INSECURE=true) "+
			"if nothing but Kronos nodes can reach the gossip port")
	}
	if o.DeviceTouchInterval > 0 {
		// A device seen within three refreshes may be connected to some
		// node: one late or failed refresh does not get it retired.
		cfg.storeOpts.DeviceIdleAfter = 3 * o.DeviceTouchInterval
	}
	var lib check.List
	lib.Merge("", o.Validate())
	lib.Merge("Store.", cfg.storeOpts.Validate())
	lib.Merge("Cluster.", cfg.cluster.Validate())
	for _, p := range check.Problems(lib.Err()) {
		problems = append(problems, describe(p))
	}
	if cfg.shutdownTimeout <= o.DrainPeriod {
		problems = append(problems, fmt.Sprintf("--shutdown-timeout %v: must be longer than --drain-period %v", cfg.shutdownTimeout, o.DrainPeriod))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("bad configuration:\n  %s", strings.Join(problems, "\n  "))
	}
	return cfg, nil
}
