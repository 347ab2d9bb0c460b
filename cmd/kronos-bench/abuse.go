package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/kronos-sync/kronos-server/node/client"
)

// The abusive clients of a soak run (kronos-bench soak). Each group runs
// a number of clients; each client opens one connection at a time, abuses
// it until the server closes it (or until its own turn ends), then opens
// the next, so that the pressure stays the same for the whole run. They
// connect from their own source addresses, apart from the legitimate
// devices, so that per-address limits can tell them apart.

// The groups, in the order reports list them.
const (
	groupSilent       = "silent"
	groupSlow         = "slow"
	groupOversized    = "oversized"
	groupNonReading   = "non_reading"
	groupUserCreating = "user_creating"
	groupGarbage      = "garbage"
)

var abuseGroups = []string{groupSilent, groupSlow, groupOversized, groupNonReading, groupUserCreating, groupGarbage}

type abuseConfig struct {
	addr    string
	sources []net.IP
	timeout time.Duration
	counts  map[string]int // clients per group

	slowInterval       time.Duration // slow: one byte per interval
	maxMessage         int           // the server's --max-message-bytes
	halfMessage        int           // oversized: bytes of a message sent before stalling
	nonReadingBytes    int           // non_reading: the size of the user's tasks
	nonReadingInterval time.Duration // non_reading: between two read-alls
	pause              time.Duration // oversized and garbage: between two connections
}

// AbuseStats is what one group of abusive clients did.
type AbuseStats struct {
	Clients int `json:"clients"`
	// Conns counts the connections opened (and logged in, for the groups
	// that log in); DialErrors those that failed to.
	Conns      int64  `json:"connections"`
	DialErrors int64  `json:"dial_errors"`
	FirstError string `json:"first_error,omitempty"`
	// ServerClosed counts the connections the server closed (or reset)
	// before the client let go of them.
	ServerClosed int64 `json:"closed_by_server"`
	BytesSent    int64 `json:"bytes_sent"`
	// Requests: read-alls (non_reading), logins (user_creating), garbage
	// messages (garbage).
	Requests     int64 `json:"requests,omitempty"`
	UsersCreated int64 `json:"users_created,omitempty"`
	Refused      int64 `json:"refused,omitempty"` // logins the server refused
}

type groupStats struct {
	clients                                  int
	conns, dialErrs, serverClosed, sent, req atomic.Int64
	users, refused                           atomic.Int64
	errMu                                    sync.Mutex
	firstErr                                 string
}

func (g *groupStats) dialFailed(err error) {
	g.dialErrs.Add(1)
	g.errMu.Lock()
	if g.firstErr == "" {
		g.firstErr = err.Error()
	}
	g.errMu.Unlock()
}

func (g *groupStats) snapshot() AbuseStats {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	return AbuseStats{Clients: g.clients, Conns: g.conns.Load(), DialErrors: g.dialErrs.Load(), FirstError: g.firstErr,
		ServerClosed: g.serverClosed.Load(), BytesSent: g.sent.Load(), Requests: g.req.Load(),
		UsersCreated: g.users.Load(), Refused: g.refused.Load()}
}

type abuser struct {
	cfg   abuseConfig
	stats map[string]*groupStats
	heavy []string // non_reading: users holding nonReadingBytes of tasks
	// nonReadingDevice is each non-reading client's device, kept from one
	// connection to the next.
	nonReadingMu     sync.Mutex
	nonReadingDevice map[int]string
	wg               sync.WaitGroup
	cancel           context.CancelFunc
}

// devicesPerHeavyUser leaves room under the default --max-devices-per-user
// (50) for the device that wrote the tasks.
const devicesPerHeavyUser = 40

func newAbuser(cfg abuseConfig) *abuser {
	a := &abuser{cfg: cfg, stats: map[string]*groupStats{}, nonReadingDevice: map[int]string{}}
	for _, g := range abuseGroups {
		a.stats[g] = &groupStats{clients: cfg.counts[g]}
	}
	return a
}

// prepare makes the users the non-reading clients log in as: each holds
// about nonReadingBytes of tasks, written with one write-all.
func (a *abuser) prepare(ctx context.Context) error {
	n := a.cfg.counts[groupNonReading]
	for i := 0; i < (n+devicesPerHeavyUser-1)/devicesPerHeavyUser; i++ {
		user, err := a.heavyUser(ctx)
		if err != nil {
			return fmt.Errorf("preparing a user with %d bytes of tasks: %w", a.cfg.nonReadingBytes, err)
		}
		a.heavy = append(a.heavy, user)
	}
	return nil
}

// heavyTasks is a write-all of tasks adding up to about size bytes.
func heavyTasks(size int) []byte {
	const taskBytes = 1500
	desc := strings.Repeat("x", taskBytes-40)
	var b bytes.Buffer
	b.WriteString(`{"type":"write-all","version":1,"tasks":[`)
	for i := 0; i < max(1, size/taskBytes); i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"desc":"%s"}`, i+1, desc)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func (a *abuser) heavyUser(ctx context.Context) (string, error) {
	c, err := client.DialFrom(ctx, client.TCP, a.cfg.addr, a.local(0))
	if err != nil {
		return "", err
	}
	defer c.Close()
	m, err := c.Login("", "", a.cfg.timeout)
	if err != nil {
		return "", err
	}
	if err := c.SendRaw(heavyTasks(a.cfg.nonReadingBytes)); err != nil {
		return "", err
	}
	// write-all has no answer: a read-all after it shows it committed.
	// The write-all's create notifications come first.
	if err := c.SendRaw([]byte(`{"type":"read-all"}`)); err != nil {
		return "", err
	}
	for {
		msg, err := c.NextRaw(a.cfg.timeout)
		if err != nil {
			return "", err
		}
		if bytes.HasPrefix(msg, kronosRefusal) {
			return "", &replyError{string(msg[:min(len(msg), 200)])}
		}
		if bytes.Contains(msg[:min(len(msg), 100)], []byte(`"type":"read-all"`)) {
			return m.Str("user_id"), nil
		}
	}
}

// start runs every group's clients until stop.
func (a *abuser) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	runs := map[string]func(context.Context, int, int, *groupStats){
		groupSilent: a.silent, groupSlow: a.slow, groupOversized: a.oversized,
		groupNonReading: a.nonReading, groupUserCreating: a.userCreating, groupGarbage: a.garbage,
	}
	for _, g := range abuseGroups {
		st := a.stats[g]
		for i := range a.cfg.counts[g] {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				for attempt := 0; ctx.Err() == nil; attempt++ {
					before := st.dialErrs.Load()
					runs[g](ctx, i, attempt, st)
					if st.dialErrs.Load() != before { // refused or out of ports: do not spin
						sleep(ctx, 100*time.Millisecond)
					}
				}
			}()
		}
	}
}

// stop ends every client and waits for them.
func (a *abuser) stop() map[string]AbuseStats {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	out := map[string]AbuseStats{}
	for g, st := range a.stats {
		if st.clients > 0 {
			out[g] = st.snapshot()
		}
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (a *abuser) local(slot int) *net.TCPAddr {
	if n := len(a.cfg.sources); n > 0 {
		return &net.TCPAddr{IP: a.cfg.sources[slot%n]}
	}
	return nil
}

// abuseConn is one connection of an abusive client: the socket, and the
// reader holding what the WebSocket handshake read past its answer.
type abuseConn struct {
	net.Conn
	r    io.Reader
	stop func() bool // undoes the close on the run's end
}

// dial opens a connection, upgraded to WebSocket if asked, that closes
// when ctx ends. It counts the connection or the failure.
func (a *abuser) dial(ctx context.Context, slot int, websocket bool, st *groupStats) *abuseConn {
	dctx, cancel := context.WithTimeout(ctx, a.cfg.timeout)
	defer cancel()
	d := dialer(a.local(slot))
	var c net.Conn
	var r io.Reader
	var err error
	if websocket {
		var br *bufio.Reader
		c, br, _, err = ws.Dialer{NetDial: d.DialContext}.Dial(dctx, "ws://"+a.cfg.addr+"/")
		r = c
		if br != nil {
			r = br
		}
	} else {
		c, err = d.DialContext(dctx, "tcp", a.cfg.addr)
		r = c
	}
	if err != nil {
		if ctx.Err() == nil {
			st.dialFailed(err)
		}
		return nil
	}
	st.conns.Add(1)
	return &abuseConn{Conn: c, r: r, stop: context.AfterFunc(ctx, func() { c.Close() })}
}

func (c *abuseConn) close() {
	c.stop()
	c.Conn.Close()
}

// drain reads and drops everything until the connection ends, and
// reports whether the server ended it (rather than this side closing it).
func (c *abuseConn) drain() bool {
	_, err := io.Copy(io.Discard, c.r)
	return !errors.Is(err, net.ErrClosed)
}

// drainAsync drains in the background; the channel says whether the
// server closed the connection.
func (c *abuseConn) drainAsync() <-chan bool {
	done := make(chan bool, 1)
	go func() { done <- c.drain() }()
	return done
}

func (c *abuseConn) send(p []byte, st *groupStats) error {
	n, err := c.Write(p)
	st.sent.Add(int64(n))
	return err
}

// finish closes c after waiting at most wait for the server to close it,
// and counts a close by the server.
func (c *abuseConn) finish(closed <-chan bool, wait time.Duration, st *groupStats) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case byServer := <-closed:
		if byServer {
			st.serverClosed.Add(1)
		}
	case <-t.C:
	}
	c.close()
}

// silent: connect and send nothing, alternately over raw TCP (nothing at
// all: the server cannot even tell the transport) and WebSocket (the
// upgrade, then nothing: no login), until the server closes it.
func (a *abuser) silent(ctx context.Context, slot, attempt int, st *groupStats) {
	c := a.dial(ctx, slot, (slot+attempt)%2 == 1, st)
	if c == nil {
		return
	}
	defer c.close()
	if c.drain() {
		st.serverClosed.Add(1)
	}
}

// maskedWriter writes a WebSocket client frame's payload, masked.
type maskedWriter struct {
	c    *abuseConn
	st   *groupStats
	mask [4]byte
	off  int
}

func (m *maskedWriter) write(p []byte) error {
	q := bytes.Clone(p)
	ws.Cipher(q, m.mask, m.off)
	m.off += len(q)
	return m.c.send(q, m.st)
}

func (c *abuseConn) frame(h ws.Header, st *groupStats) (*maskedWriter, error) {
	h.Masked = true
	h.Mask = ws.NewMask()
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, h); err != nil {
		return nil, err
	}
	return &maskedWriter{c: c, st: st, mask: h.Mask}, c.send(b.Bytes(), st)
}

// slow: start a message and send the rest one byte every slowInterval,
// in turn: a raw TCP request, a WebSocket text frame of 1 MiB, and the
// WebSocket upgrade request itself.
func (a *abuser) slow(ctx context.Context, slot, attempt int, st *groupStats) {
	mode := (slot + attempt) % 3
	c := a.dial(ctx, slot, mode == 1, st)
	if c == nil {
		return
	}
	closed := c.drainAsync()
	var next func() error
	switch mode {
	case 0:
		if c.send([]byte(`{"type":"read-all","pad":"`), st) != nil {
			break
		}
		next = func() error { return c.send([]byte("a"), st) }
	case 1:
		w, err := c.frame(ws.Header{Fin: true, OpCode: ws.OpText, Length: 1 << 20}, st)
		if err != nil {
			break
		}
		if w.write([]byte(`{"type":"read-all","pad":"`)) != nil {
			break
		}
		next = func() error { return w.write([]byte("a")) }
	case 2:
		if c.send([]byte("GET / HTTP/1.1\r\nHost: kronos\r\nX-Pad: "), st) != nil {
			break
		}
		next = func() error { return c.send([]byte("a"), st) }
	}
	tick := time.NewTicker(a.cfg.slowInterval)
	defer tick.Stop()
	for next != nil {
		select {
		case byServer := <-closed:
			if byServer {
				st.serverClosed.Add(1)
			}
			c.close()
			return
		case <-ctx.Done():
			c.close()
			return
		case <-tick.C:
			if next() != nil {
				next = nil
			}
		}
	}
	c.finish(closed, 5*time.Second, st)
}

// padChunk is what oversized messages are made of.
var padChunk = bytes.Repeat([]byte("a"), 64<<10)

// sendPadded sends head, then n bytes of padding, through write.
func sendPadded(write func([]byte) error, head []byte, n int) error {
	if err := write(head); err != nil {
		return err
	}
	for n > 0 {
		k := min(n, len(padChunk))
		if err := write(padChunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// oversized, in turn: a raw TCP request over --max-message-bytes, a
// WebSocket message over it, and, under it, half messages of
// halfMessage bytes that then stall until the server closes them: a raw
// TCP request, a WebSocket frame, the first fragment of a WebSocket
// message.
func (a *abuser) oversized(ctx context.Context, slot, attempt int, st *groupStats) {
	mode := (slot + attempt) % 5
	c := a.dial(ctx, slot, mode == 1 || mode == 3 || mode == 4, st)
	if c == nil {
		return
	}
	closed := c.drainAsync()
	head := []byte(`{"type":"read-all","pad":"`)
	over := a.cfg.maxMessage + len(padChunk)
	send := func(p []byte) error { return c.send(p, st) }
	stall := false
	switch mode {
	case 0:
		if sendPadded(send, head, over) == nil {
			c.send([]byte(`"}`), st)
		}
	case 1:
		if w, err := c.frame(ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(head) + over + 2)}, st); err == nil {
			if sendPadded(w.write, head, over) == nil {
				w.write([]byte(`"}`))
			}
		}
	case 2:
		stall = sendPadded(send, head, a.cfg.halfMessage) == nil
	case 3:
		// The frame announces a message between what is sent and the
		// limit: the node must hold what came while it waits for the rest.
		length := len(head) + a.cfg.halfMessage + (a.cfg.maxMessage-a.cfg.halfMessage-len(head))/2
		if w, err := c.frame(ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(length)}, st); err == nil {
			stall = sendPadded(w.write, head, a.cfg.halfMessage) == nil
		}
	case 4:
		if w, err := c.frame(ws.Header{Fin: false, OpCode: ws.OpText, Length: int64(len(head) + a.cfg.halfMessage)}, st); err == nil {
			stall = sendPadded(w.write, head, a.cfg.halfMessage) == nil
		}
	}
	if stall {
		select {
		case byServer := <-closed:
			if byServer {
				st.serverClosed.Add(1)
			}
			c.close()
		case <-ctx.Done():
			c.close()
		}
		return
	}
	// The server answers an error; on WebSocket it may keep the
	// connection open.
	c.finish(closed, 2*time.Second, st)
	sleep(ctx, a.cfg.pause)
}

// nonReading: log in as a user holding nonReadingBytes of tasks (the same
// device each time, so that a new connection takes the old one over),
// then ask for all of them every nonReadingInterval and never read, with
// a small receive buffer, over raw TCP and WebSocket in turn.
func (a *abuser) nonReading(ctx context.Context, slot, attempt int, st *groupStats) {
	tr := client.TCP
	if slot%2 == 1 {
		tr = client.WebSocket
	}
	c, done := a.dialClient(ctx, tr, slot, st)
	if c == nil {
		return
	}
	defer done()
	if b, ok := c.Conn.(interface{ SetReadBuffer(int) error }); ok {
		b.SetReadBuffer(4096)
	}
	a.nonReadingMu.Lock()
	device := a.nonReadingDevice[slot]
	a.nonReadingMu.Unlock()
	m, err := c.Login(a.heavy[slot/devicesPerHeavyUser], device, a.cfg.timeout)
	if err != nil {
		if ctx.Err() == nil {
			st.dialFailed(err)
		}
		return
	}
	st.conns.Add(1)
	a.nonReadingMu.Lock()
	a.nonReadingDevice[slot] = m.Str("device_id")
	a.nonReadingMu.Unlock()
	req := []byte(`{"type":"read-all"}`)
	tick := time.NewTicker(a.cfg.nonReadingInterval)
	defer tick.Stop()
	for {
		if err := c.SendRaw(req); err != nil {
			if ctx.Err() == nil {
				st.serverClosed.Add(1)
			}
			return
		}
		st.req.Add(1)
		st.sent.Add(int64(len(req)))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// dialClient connects a protocol client from the slot's source address,
// closed when ctx ends; done closes it. It returns nil (counted) when the
// dial fails.
func (a *abuser) dialClient(ctx context.Context, tr client.Transport, slot int, st *groupStats) (*client.Client, func()) {
	dctx, cancel := context.WithTimeout(ctx, a.cfg.timeout)
	defer cancel()
	c, err := client.DialFrom(dctx, tr, a.cfg.addr, a.local(slot))
	if err != nil {
		if ctx.Err() == nil {
			st.dialFailed(err)
		}
		return nil, nil
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); c.Close() }
}

// userCreating: log in without a user_id, which creates a user, then
// close and do it again, as fast as the server answers; over raw TCP and
// WebSocket in turn.
func (a *abuser) userCreating(ctx context.Context, slot, attempt int, st *groupStats) {
	tr := client.TCP
	if (slot+attempt)%2 == 1 {
		tr = client.WebSocket
	}
	c, done := a.dialClient(ctx, tr, slot, st)
	if c == nil {
		return
	}
	defer done()
	st.conns.Add(1)
	st.req.Add(1)
	m, err := c.Login("", "", a.cfg.timeout)
	switch {
	case err == nil:
		st.users.Add(1)
	case m != nil: // refused, with an answer
		st.refused.Add(1)
		sleep(ctx, 10*time.Millisecond)
	case ctx.Err() == nil:
		st.serverClosed.Add(1)
	}
}

// garbageKinds are the garbage clients' messages, in turn.
var garbageKinds = []string{"tcp-bad-json", "tcp-random", "tcp-bad-utf8", "ws-bad-utf8", "ws-not-json", "ws-bad-frame", "http-garbage"}

// garbage: random bytes, bad UTF-8, malformed frames; see garbageKinds.
// Each connection sends a burst of one kind, reads what comes back for a
// second at most, and closes.
func (a *abuser) garbage(ctx context.Context, slot, attempt int, st *groupStats) {
	kind := garbageKinds[(slot+attempt)%len(garbageKinds)]
	c := a.dial(ctx, slot, strings.HasPrefix(kind, "ws-"), st)
	if c == nil {
		return
	}
	closed := c.drainAsync()
	random := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rand.IntN(256))
		}
		return p
	}
	text := func(p []byte) error {
		w, err := c.frame(ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(p))}, st)
		if err == nil {
			err = w.write(p)
		}
		return err
	}
	for range 10 {
		var err error
		switch kind {
		case "tcp-bad-json":
			err = c.send(append([]byte(`{"type":`), random(64)...), st)
		case "tcp-random":
			err = c.send(random(256), st)
		case "tcp-bad-utf8":
			err = c.send([]byte("{\"type\":\"login\",\"user_id\":\"\xff\xfe\xfd\"}"), st)
		case "ws-bad-utf8":
			err = text([]byte("{\"type\":\"read-all\",\"x\":\"\xc3\x28\"}"))
		case "ws-not-json":
			err = text(random(32))
		case "ws-bad-frame":
			// In turn: reserved bits set, an unknown opcode, a control
			// frame over 125 bytes, a continuation with nothing to continue.
			hs := []ws.Header{
				{Fin: true, Rsv: 7, OpCode: ws.OpText, Length: 4},
				{Fin: true, OpCode: 0x3, Length: 4},
				{Fin: true, OpCode: ws.OpPing, Length: 200},
				{Fin: true, OpCode: ws.OpContinuation, Length: 4},
			}
			h := hs[rand.IntN(len(hs))]
			w, ferr := c.frame(h, st)
			if ferr == nil {
				ferr = w.write(random(int(h.Length)))
			}
			err = ferr
		case "http-garbage":
			err = c.send(append([]byte("GET /\x00 HTTP/1.1\r\nHost: \xff\r\n"), random(128)...), st)
		}
		if err != nil {
			break
		}
		st.req.Add(1)
	}
	c.finish(closed, time.Second, st)
	sleep(ctx, a.cfg.pause)
}
