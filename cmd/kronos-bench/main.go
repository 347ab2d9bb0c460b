// Command kronos-bench is a load generator for a running Kronos node, or
// for a Centrifugo server driven the same way (--server centrifugo) to
// compare the two.
//
// It opens connections over raw TCP and WebSocket, spread over several
// loopback source addresses and several child processes (so that no process
// passes ~19,000 descriptors), logs in users with several devices each,
// holds them idle, drives writes at a given rate, and reports the server's
// memory per idle connection, its goroutines, the end-to-end notification
// latency (send → receipt on each other device), the notifications
// delivered per second, and how long a reconnect storm takes. It writes the
// results as JSON and as PNG charts.
//
//	kronos-bench --addr 127.0.0.1:5000 --admin 127.0.0.1:9090 --users 1900 --devices 10
//	kronos-bench --server centrifugo --centrifugo-secret KEY --addr 127.0.0.1:8000 --admin 127.0.0.1:9000
//	kronos-bench compare-report --in DIR --out PREFIX
//
// kronos-bench soak runs a lighter legitimate load for long beside abusive
// clients and samples the server's memory all along (soak.go, soak.sh):
//
//	kronos-bench soak --addr 127.0.0.1:5056 --admin 127.0.0.1:9096 --duration 10m --out soak.json
//	kronos-bench soak-report --clean clean.json --soak soak.json --rss-bound-mib 256 --out summary
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"
)

type options struct {
	server, secret    string
	addr, admin       string
	tls               bool
	users, devices    int
	wsShare           float64
	procs             int
	maxConnsPerProc   int
	sources           string
	steps             int
	idle              time.Duration
	rate              float64
	duration          time.Duration
	storm             bool
	out, label, image string
	timeout           time.Duration
	dialConc          int
	workerProcs       int // GOMAXPROCS of each worker process
}

// subcommands are the modes other than a run; a run takes only flags.
var subcommands = map[string]func(args []string) error{
	"worker":            runWorker, // a child process holding connections
	"compare-report":    runCompareReport,
	"centrifugo-config": runCentrifugoConfig, // the configuration compare.sh runs it with
	"soak":              runSoakCommand,      // legitimate load beside abusive clients (soak.go)
	"soak-report":       runSoakReport,
	"trace-report":      runTraceReport,  // a node's goroutines from a runtime trace (tracereport.go)
	"machine-probe":     runMachineProbe, // what the machine's basic operations cost (probe.go)
	"send-floor":        runSendFloor,    // what the kernel charges per small loopback send (floor.go)
	"send-floor-reader": runSendFloorReader,
}

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			if err := sub(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "kronos-bench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	var o options
	fs := flag.NewFlagSet("kronos-bench", flag.ExitOnError)
	fs.StringVar(&o.server, "server", serverKronos, "the server under test: kronos, or centrifugo (its JSON protocol over WebSocket)")
	fs.StringVar(&o.secret, "centrifugo-secret", "", "centrifugo: the HMAC key of its client.token.hmac_secret_key, to sign connection tokens")
	fs.StringVar(&o.addr, "addr", "127.0.0.1:5000", "the server's client address")
	fs.BoolVar(&o.tls, "tls", false, "kronos: connect over TLS (the server's --tls-cert; the certificate is not checked: this measures cost)")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:9090", "the server's admin address (for /metrics; Centrifugo's internal port)")
	fs.IntVar(&o.users, "users", 100, "users")
	fs.IntVar(&o.devices, "devices", 5, "devices (connections) per user")
	fs.Float64Var(&o.wsShare, "ws", 0.5, "share of connections over WebSocket, the rest raw TCP (centrifugo: always 1, it has no raw TCP)")
	fs.IntVar(&o.procs, "procs", 0, "worker processes (0: enough for --max-conns-per-proc)")
	fs.IntVar(&o.maxConnsPerProc, "max-conns-per-proc", 15000, "connections one worker process may hold")
	fs.StringVar(&o.sources, "sources", "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8", "local addresses to connect from")
	fs.IntVar(&o.steps, "steps", 5, "steps of the connection ramp (memory is sampled after each)")
	fs.DurationVar(&o.idle, "idle", 3*time.Second, "how long connections sit idle before memory is read")
	fs.Float64Var(&o.rate, "rate", 1000, "writes per second in the load phase (each notifies every device of its user)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of the load phase")
	fs.BoolVar(&o.storm, "storm", true, "drop all connections and log them in again at once")
	fs.StringVar(&o.out, "out", "bench.json", "results file (JSON)")
	fs.StringVar(&o.image, "png", "", "chart file prefix: writes PREFIX-latency.png and PREFIX-memory.png")
	fs.StringVar(&o.label, "label", "", "a name for this run in the results")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "timeout of one dial and login, and of waiting for the server's /metrics at the start")
	fs.IntVar(&o.dialConc, "dial-concurrency", 256, "logins in flight per worker while ramping")
	fs.IntVar(&o.workerProcs, "worker-gomaxprocs", 1, "GOMAXPROCS of each worker process, and so its epoll pollers (0: Go's default, one per CPU)")
	fs.Parse(os.Args[1:])
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "kronos-bench:", err)
		os.Exit(2)
	}
	res, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kronos-bench:", err)
		os.Exit(1)
	}
	if err := writeResults(o, res); err != nil {
		fmt.Fprintln(os.Stderr, "kronos-bench:", err)
		os.Exit(1)
	}
	fmt.Println(res.summary())
	if res.Errors > 0 {
		os.Exit(1)
	}
}

// validate checks the options that depend on the server, and sets what
// one server allows only one way.
func (o *options) validate() error {
	switch o.server {
	case serverKronos:
		if o.secret != "" {
			return errors.New("--centrifugo-secret is for --server centrifugo")
		}
	case serverCentrifugo:
		if o.secret == "" {
			return errors.New("--server centrifugo needs --centrifugo-secret (its client.token.hmac_secret_key)")
		}
		if o.tls {
			return errors.New("--tls is for --server kronos")
		}
		o.wsShare = 1 // Centrifugo has no raw TCP transport
	default:
		return fmt.Errorf("--server %q: want %s or %s", o.server, serverKronos, serverCentrifugo)
	}
	return nil
}

func runWorker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var cfg workerConfig
	var sources string
	fs.StringVar(&cfg.server, "server", serverKronos, "")
	fs.StringVar(&cfg.addr, "addr", "", "")
	fs.BoolVar(&cfg.tls, "tls", false, "")
	fs.IntVar(&cfg.users, "users", 0, "")
	fs.IntVar(&cfg.devices, "devices", 0, "")
	fs.Float64Var(&cfg.wsShare, "ws", 0, "")
	fs.IntVar(&cfg.index, "index", 0, "")
	fs.StringVar(&sources, "sources", "", "")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "")
	fs.IntVar(&cfg.dialConc, "dial-concurrency", 256, "")
	gomaxprocs := fs.Int("gomaxprocs", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *gomaxprocs > 0 {
		// Before newWorker: it starts a poller per P. The workers are
		// several processes already; with a P each, each reads its
		// sockets on one thread, and their threads wake one another less
		// (docs/benchmarks.md).
		runtime.GOMAXPROCS(*gomaxprocs)
	}
	for _, s := range strings.Split(sources, ",") {
		if ip := net.ParseIP(strings.TrimSpace(s)); ip != nil {
			cfg.sources = append(cfg.sources, ip)
		}
	}
	// The secret comes through the environment, not argv, where ps shows it.
	cfg.secret = os.Getenv(secretEnv)
	w, err := newWorker(cfg)
	if err != nil {
		return err
	}
	// A CPU profile of the tool itself, to see what it costs beside the
	// server it measures.
	if dir := os.Getenv(profileEnv); dir != "" {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("worker-%d.cpu.pprof", cfg.index)))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return w.serve(os.Stdin, os.Stdout)
}

// profileEnv names a directory where each worker writes a CPU profile of
// its whole run.
const profileEnv = "KRONOS_BENCH_WORKER_PROFILE"

// secretEnv carries --centrifugo-secret to the workers.
const secretEnv = "KRONOS_BENCH_CENTRIFUGO_SECRET"

// child is one worker process.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	dec   *json.Decoder
	conns int // devices it holds
}

func (c *child) do(cmd command) (reply, error) {
	if err := json.NewEncoder(c.in).Encode(cmd); err != nil {
		return reply{}, err
	}
	var r reply
	err := c.dec.Decode(&r)
	return r, err
}

// all sends a command to every worker at once and collects the replies.
func all(children []*child, cmd func(*child) command) ([]reply, error) {
	replies := make([]reply, len(children))
	errs := make([]error, len(children))
	var wg sync.WaitGroup
	for i, c := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i], errs[i] = c.do(cmd(c))
		}()
	}
	wg.Wait()
	return replies, errors.Join(errs...)
}

func spawn(o options) ([]*child, error) {
	total := o.users * o.devices
	procs := o.procs
	if procs <= 0 {
		procs = max(1, (total+o.maxConnsPerProc-1)/o.maxConnsPerProc)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var children []*child
	usersLeft := o.users
	for i := range procs {
		users := usersLeft / (procs - i)
		usersLeft -= users
		cmd := exec.Command(self, "worker", "--server", o.server, "--addr", o.addr, "--tls="+strconv.FormatBool(o.tls), "--users", strconv.Itoa(users),
			"--devices", strconv.Itoa(o.devices), "--ws", fmt.Sprint(o.wsShare), "--index", strconv.Itoa(i),
			"--sources", o.sources, "--timeout", o.timeout.String(), "--dial-concurrency", strconv.Itoa(o.dialConc),
			"--gomaxprocs", strconv.Itoa(o.workerProcs))
		cmd.Stderr = os.Stderr
		cmd.Env = append(os.Environ(), secretEnv+"="+o.secret)
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		children = append(children, &child{cmd: cmd, in: in, dec: json.NewDecoder(bufio.NewReader(out)), conns: users * o.devices})
	}
	return children, nil
}
