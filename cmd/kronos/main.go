// Command kronos runs the Kronos sync server.
//
//	kronos serve [flags]   run a node (every flag has a KRONOS_* equivalent)
//	kronos backup          copy a running node's embedded store (backup.go)
//	kronos restore         put a backup in place of a stopped node's store (restore.go)
//	kronos migrate         copy every user from one store to another (migrate.go)
//	kronos version         print the version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/stores"
	"github.com/kronos-sync/kronos-server/node"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: kronos serve [flags] | backup | restore | migrate | version")
		return 2
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "kronos", version)
		return 0
	case "serve":
		cfg, err := parseServeFlags(args[1:], stderr)
		if err != nil {
			if errors.Is(err, errHelp) {
				return 0
			}
			fmt.Fprintln(stderr, "kronos:", err)
			return 2
		}
		if err := serve(cfg, stderr); err != nil {
			fmt.Fprintln(stderr, "kronos:", err)
			return 1
		}
		return 0
	case "backup":
		return runBackup(args[1:], stdout, stderr)
	case "restore":
		return runRestore(args[1:], stdout, stderr)
	case "migrate":
		return runMigrate(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "kronos: unknown command %q (want serve, backup, restore, migrate or version)\n", args[0])
	return 2
}

func newLogger(cfg *config, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(cfg.logLevel)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	switch cfg.logFormat {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want json or console", cfg.logFormat)
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// openStore opens the store, retrying with backoff while it does not
// answer (a node may start before its database). A configuration the store
// refuses outright (a bad URL) is not retried.
func openStore(ctx context.Context, url string, opts feed.Options, admin *adminPort, log zerolog.Logger) (feed.Backend, error) {
	backoff := 250 * time.Millisecond
	for {
		b, err := stores.Open(ctx, url, opts)
		if err == nil || errors.Is(err, stores.ErrConfig) {
			return b, err
		}
		// The error names the store by its URL with the password hidden.
		admin.waiting("store unreachable: " + err.Error())
		log.Warn().Err(err).Dur("retry_in", backoff).Msg("store unreachable; retrying")
		select {
		case <-ctx.Done():
			return feed.Backend{}, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func serve(cfg *config, stderr io.Writer) error {
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	mem := applyMemoryPolicy(cfg.memoryLimit, "/sys/fs/cgroup")
	log.Info().Int64("memory_limit", mem.limit).Str("source", mem.source).Msg("memory policy")
	// Before the node starts: its fan-out runs one goroutine per P.
	procs := applyProcsPolicy(cfg.gomaxprocs)
	log.Info().Int("gomaxprocs", procs.procs).Str("source", procs.source).Msg("scheduler policy")
	reg := prometheus.NewRegistry()
	// The scheduler's metrics add go_sched_latencies_seconds, how long
	// runnable goroutines waited for a P: on a node short of CPU, the tail
	// of the notifications' latency shows there first.
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The admin port comes first, so that probes see a node that waits for
	// its store as alive but not ready.
	adminLn, err := net.Listen("tcp", cfg.adminListen)
	if err != nil {
		return fmt.Errorf("admin listen %s: %w", cfg.adminListen, err)
	}
	adminPort := newAdminPort(reg)
	// Bounded like any server a network can reach: idle keep-alive
	// connections go, heads are small, slow senders are cut (a CPU
	// profile answers after its own seconds, hence the write timeout).
	admin := &http.Server{Handler: adminPort, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 2 * time.Minute, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := admin.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("admin server stopped")
		}
	}()
	defer admin.Close()
	log.Info().Str("admin", adminLn.Addr().String()).Msg("admin listening")

	storeOpts := cfg.storeOpts
	storeOpts.Limits, storeOpts.Logger, storeOpts.Registerer = cfg.node.Limits, log, reg
	backend, err := openStore(ctx, cfg.store, storeOpts, adminPort, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("stopped before the store answered")
			return nil
		}
		return err
	}
	defer backend.Store.Close()

	cfg.node.Logger, cfg.node.Registerer = log, reg
	n, err := node.New(backend, cfg.node)
	if err != nil {
		return err
	}
	if err := n.Start(); err != nil {
		return err
	}
	adminPort.serveNode(n.AdminHandler(reg))
	if len(cfg.cluster.Join) > 0 {
		cfg.cluster.Version, cfg.cluster.Logger, cfg.cluster.Registerer = version, log, reg
		if _, err := n.JoinCluster(cfg.cluster); err != nil {
			n.Shutdown(context.Background())
			return err
		}
	}
	log.Info().Str("version", version).Str("admin", adminLn.Addr().String()).Msg("kronos started")

	<-ctx.Done()
	stop() // a second signal kills the process the default way
	log.Info().Msg("signal received: draining")
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	// Drain leaves the cluster it joined, within the deadline.
	if err := n.Drain(shutCtx); err != nil {
		log.Warn().Err(err).Msg("shutdown incomplete")
	}
	if err := backend.Store.Close(); err != nil {
		log.Error().Err(err).Msg("closing store")
	}
	log.Info().Msg("stopped")
	return nil
}
