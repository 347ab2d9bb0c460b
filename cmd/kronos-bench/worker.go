package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kronos-sync/kronos-server/node/client"
)

// A worker is a child process holding a share of the connections. The
// parent sends it one command per line on stdin and reads one reply per
// line on stdout.

type command struct {
	Cmd      string        `json:"cmd"`
	Count    int           `json:"count,omitempty"`    // connect: devices to have connected
	Rate     float64       `json:"rate,omitempty"`     // load: writes per second
	Duration time.Duration `json:"duration,omitempty"` // load
	// Window, if set, also splits the load's latencies by the window of
	// their receipt since the load started (soak: p99 minute by minute).
	Window time.Duration `json:"window,omitempty"`
}

type reply struct {
	Conns    int     `json:"conns"`
	Errors   int     `json:"errors"`
	FirstErr string  `json:"first_error,omitempty"`
	Sent     int64   `json:"sent,omitempty"`
	Received int64   `json:"received,omitempty"`
	Bytes    int64   `json:"bytes,omitempty"`   // of the notifications received
	LastNS   int64   `json:"last_ns,omitempty"` // Unix time of the last one
	Hist     *Hist   `json:"hist,omitempty"`
	Windows  []*Hist `json:"windows,omitempty"` // load with a window
	StormMS  float64 `json:"storm_ms,omitempty"`
	Pollers  int     `json:"pollers,omitempty"` // connect: the worker's epoll pollers, one per P
	// CPUSeconds is the worker's CPU time (user and system) during the
	// command: load only.
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

type workerConfig struct {
	server   string // serverKronos or serverCentrifugo
	secret   string // Centrifugo's HMAC key for connection tokens
	addr     string
	tls      bool // kronos over TLS
	users    int
	devices  int
	wsShare  float64
	sources  []net.IP
	index    int // this worker's number, to spread source addresses
	timeout  time.Duration
	dialConc int
}

type benchUser struct {
	id      string
	devices []*benchDevice
	version atomic.Int64
}

type benchDevice struct {
	user     *benchUser
	index    int
	global   int
	tr       client.Transport // Kronos only: Centrifugo is all WebSocket
	deviceID string
	link     atomic.Pointer[link] // nil while disconnected
}

// link holds a device's session, so that it can be swapped atomically,
// and who reads its connection.
type link struct {
	session
	p  *poller // nil: a goroutine reads it (TLS)
	fd int
}

type worker struct {
	cfg      workerConfig
	target   target
	pollers  []*poller
	users    []*benchUser
	order    []*benchDevice // connection order: user by user
	received atomic.Int64
	bytes    atomic.Int64
	lastRecv atomic.Int64 // Unix nanoseconds of the last notification measured
	measure  atomic.Bool
	histMu   sync.Mutex
	hist     *Hist
	window   time.Duration // of windows; 0: none
	start    time.Time     // of the load, for windows
	windows  []*Hist
	errMu    sync.Mutex
	errs     int
	firstErr string
}

func newWorker(cfg workerConfig) (*worker, error) {
	t, err := newTarget(cfg)
	if err != nil {
		return nil, err
	}
	w := &worker{cfg: cfg, target: t, hist: NewHist()}
	for range runtime.GOMAXPROCS(0) {
		p, err := newPoller()
		if err != nil {
			return nil, err
		}
		w.pollers = append(w.pollers, p)
	}
	for u := range cfg.users {
		user := &benchUser{}
		for d := range cfg.devices {
			global := (cfg.index*cfg.users+u)*cfg.devices + d
			tr := client.TCP
			if float64(global%100) < cfg.wsShare*100 {
				tr = client.WebSocket
			}
			dev := &benchDevice{user: user, index: d, global: global, tr: tr}
			user.devices = append(user.devices, dev)
			w.order = append(w.order, dev)
		}
		w.users = append(w.users, user)
	}
	return w, nil
}

func (w *worker) fail(err error) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if w.errs == 0 {
		w.firstErr = err.Error()
	}
	w.errs++
}

func (w *worker) takeErrors() (int, string) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	n, first := w.errs, w.firstErr
	w.errs, w.firstErr = 0, ""
	return n, first
}

func (w *worker) connected() int {
	n := 0
	for _, d := range w.order {
		if d.link.Load() != nil {
			n++
		}
	}
	return n
}

// serve runs commands until quit or EOF.
func (w *worker) serve(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	for {
		var cmd command
		if err := dec.Decode(&cmd); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		var r reply
		switch cmd.Cmd {
		case "connect":
			w.connectUpTo(cmd.Count)
			r.Pollers = len(w.pollers)
		case "load":
			w.histMu.Lock()
			w.window, w.windows = cmd.Window, nil
			w.histMu.Unlock()
			cpu := processCPUSeconds()
			r.Sent, r.Received, r.Bytes, r.Hist = w.load(cmd.Rate, cmd.Duration)
			r.CPUSeconds = processCPUSeconds() - cpu
			w.histMu.Lock()
			r.Windows, w.window = w.windows, 0
			w.histMu.Unlock()
			r.LastNS = w.lastRecv.Load()
		case "storm":
			r.StormMS = float64(w.storm()) / float64(time.Millisecond)
		case "quit":
			w.closeAll()
			return enc.Encode(reply{})
		default:
			return fmt.Errorf("unknown command %q", cmd.Cmd)
		}
		r.Conns = w.connected()
		r.Errors, r.FirstErr = w.takeErrors()
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
}

// login connects one device and starts its reader.
func (w *worker) login(d *benchDevice) error {
	var local *net.TCPAddr
	if n := len(w.cfg.sources); n > 0 {
		local = &net.TCPAddr{IP: w.cfg.sources[d.global%n]}
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.timeout)
	defer cancel()
	s, err := w.target.connect(ctx, d, local)
	if err != nil {
		return err
	}
	got := func(msg []byte, err error) { w.receive(d, msg, err) }
	conn, pending, err := s.handoff(got)
	if err != nil {
		s.close()
		return err
	}
	l := &link{session: s}
	st := &stream{sess: s, got: got, done: func() {
		// The device counts as disconnected, unless it has logged in
		// again already.
		d.link.CompareAndSwap(l, nil)
	}}
	if _, plain := conn.(*net.TCPConn); !plain {
		d.link.Store(l)
		go pump(st, conn, pending)
		return nil
	}
	fc, err := detach(conn)
	if err != nil {
		s.close()
		return err
	}
	s.useConn(fc)
	st.fd = fc.fd
	l.p, l.fd = w.pollers[st.fd%len(w.pollers)], st.fd
	d.link.Store(l)
	if err := l.p.watch(st, pending); err != nil {
		d.link.CompareAndSwap(l, nil)
		s.close()
		return err
	}
	return nil
}

// connectUpTo connects devices, in order, until count are connected. The
// first device of each user logs in before the others, which join it.
func (w *worker) connectUpTo(count int) {
	count = min(count, len(w.order))
	sem := make(chan struct{}, w.cfg.dialConc)
	var wg sync.WaitGroup
	for _, u := range w.users {
		first := u.devices[0]
		if first.global-w.order[0].global >= count {
			break
		}
		if first.link.Load() == nil {
			if err := w.login(first); err != nil {
				w.fail(err)
				continue
			}
		}
		for _, d := range u.devices[1:] {
			if d.global-w.order[0].global >= count || d.link.Load() != nil {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := w.login(d); err != nil {
					w.fail(err)
				}
			}()
		}
	}
	wg.Wait()
}

var sentKey = []byte(`"sent":`)

// receive counts a notification; for one from another device it records
// the latency from the writer's send time, which the notification carries.
func (w *worker) receive(d *benchDevice, msg []byte, err error) {
	if err != nil {
		w.fail(err) // a refused request
		return
	}
	if !w.measure.Load() {
		return
	}
	now := time.Now()
	w.received.Add(1)
	w.bytes.Add(int64(len(msg)))
	w.lastRecv.Store(now.UnixNano())
	i := bytes.Index(msg, sentKey)
	if i < 0 || bytes.Contains(msg, []byte(d.deviceID)) {
		return // not a bench update, or this device's own
	}
	rest := msg[i+len(sentKey):]
	end := bytes.IndexAny(rest, ",}")
	sent, err := strconv.ParseInt(string(rest[:max(end, 0)]), 10, 64)
	if err != nil {
		return
	}
	lat := time.Duration(now.UnixNano() - sent)
	w.histMu.Lock()
	w.hist.Add(lat)
	if w.window > 0 {
		i := int(now.Sub(w.start) / w.window)
		for len(w.windows) <= i {
			w.windows = append(w.windows, NewHist())
		}
		w.windows[i].Add(lat)
	}
	w.histMu.Unlock()
}

// load sends updates at rate per second, round robin over the users whose
// first device is connected, for d; then waits for the tail to arrive.
func (w *worker) load(rate float64, d time.Duration) (sent, received, size int64, h *Hist) {
	w.histMu.Lock()
	w.hist = NewHist()
	w.start = time.Now()
	w.histMu.Unlock()
	w.received.Store(0)
	w.bytes.Store(0)
	w.lastRecv.Store(0)
	w.measure.Store(true)
	var writers []*benchDevice
	for _, u := range w.users {
		if u.devices[0].link.Load() != nil {
			writers = append(writers, u.devices[0])
		}
	}
	if len(writers) > 0 && rate > 0 {
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		next := 0
		for now := range tick.C {
			elapsed := now.Sub(start)
			if elapsed >= d {
				break
			}
			due := int64(rate * elapsed.Seconds())
			for ; sent < due; sent++ {
				dev := writers[next%len(writers)]
				next++
				v := dev.user.version.Add(1)
				if l := dev.link.Load(); l == nil {
					w.fail(errors.New("write on a closed connection"))
				} else if err := l.write(time.Now().UnixNano(), v); err != nil {
					w.fail(fmt.Errorf("write: %w", err))
				}
			}
		}
		tick.Stop()
	}
	// Let the last notifications arrive: stop when nothing came for 1s.
	for last := int64(-1); last != w.received.Load(); {
		last = w.received.Load()
		time.Sleep(time.Second)
	}
	w.measure.Store(false)
	w.histMu.Lock()
	h = w.hist
	w.histMu.Unlock()
	return sent, w.received.Load(), w.bytes.Load(), h
}

// storm drops every connection at once, then logs every device in again at
// once, and returns how long until the last one was back.
func (w *worker) storm() time.Duration {
	w.closeAll()
	start := time.Now()
	var wg sync.WaitGroup
	for _, d := range w.order {
		if d.deviceID == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			for attempt := range 5 { // a loaded listener may refuse a few
				if err = w.login(d); err == nil {
					return
				}
				time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
			}
			w.fail(err)
		}()
	}
	wg.Wait()
	return time.Since(start)
}

func (w *worker) closeAll() {
	for _, d := range w.order {
		if l := d.link.Swap(nil); l != nil {
			if l.p != nil {
				l.p.unwatch(l.fd) // before the number can be reused
			}
			l.close()
		}
	}
}

// processCPUSeconds is the CPU time, user and system, this process has
// used so far.
func processCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
