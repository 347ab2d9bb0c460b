package cluster

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/internal/gossiptest"
)

func newKey(t *testing.T) []byte {
	key := make([]byte, 32)
	rand.Read(key)
	return key
}

// start runs a member on a random loopback port, with fast timers, and
// leaves when the test ends.
func start(t *testing.T, opts Options, h Handler) *Cluster {
	t.Helper()
	opts.Bind, opts.Fast = "127.0.0.1:0", true
	if opts.ClientAddr == "" {
		opts.ClientAddr = "127.0.0.1:5000"
	}
	if opts.Logger.GetLevel() == zerolog.TraceLevel { // the zero Logger
		opts.Logger = zerolog.Nop()
	}
	c, err := Start(opts, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Leave(time.Second) })
	return c
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func memberOf(c *Cluster, name string) (Member, bool) {
	for _, m := range c.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// counter sums the samples of a metric whose labels include the pairs.
func counter(t *testing.T, reg *prometheus.Registry, name string, pairs ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i < len(pairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == pairs[i] && l.GetValue() == pairs[i+1]
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

type idle struct{}

func (idle) Local() (int, string)   { return 0, StateReady }
func (idle) TakeOver(string, int64) {}

// recorder keeps the takeovers it is told of, in order.
type recorder struct {
	mu      sync.Mutex
	devices []string
	delays  []time.Duration // from loggedInAt to arrival
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (*recorder) Local() (int, string) { return 0, StateReady }
func (r *recorder) TakeOver(device string, at int64) {
	r.mu.Lock()
	r.devices = append(r.devices, device)
	r.delays = append(r.delays, time.Duration(time.Now().UnixNano()-at))
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// wait returns once n takeovers arrived.
func (r *recorder) wait(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		got := len(r.devices)
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("%d of %d takeovers arrived within %v", got, n, within)
		}
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.devices)
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(int(float64(len(s))*p), len(s)-1)]
}

// memberlist panics on metadata over 512 bytes: a node refuses to start
// with too long a client address or version, and NodeMeta never hands
// memberlist more than its limit.
func TestMetadataStaysUnderTheLimit(t *testing.T) {
	_, err := Start(Options{Bind: "127.0.0.1:0", ClientAddr: strings.Repeat("x", 600), Insecure: true, Logger: zerolog.Nop()}, idle{})
	if err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("an oversized client address was accepted: %v", err)
	}
	c, err := Start(Options{Bind: "127.0.0.1:0", ClientAddr: "[2001:db8::1234:5678:9abc:def0]:5000",
		Version: "v1.2.3-rc.4+build.5678", Key: newKey(t), Logger: zerolog.Nop()}, fakeLocal{conns: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Leave(0)
	d := &delegate{c}
	if meta := d.NodeMeta(memberlist.MetaMaxSize); len(meta) > memberlist.MetaMaxSize || !strings.Contains(string(meta), `"s":"draining"`) {
		t.Fatalf("metadata %d bytes: %s", len(meta), meta)
	}
	if meta := d.NodeMeta(40); len(meta) > 40 {
		t.Fatalf("metadata over a small limit: %d bytes", len(meta))
	}
	if members := c.Members(); len(members) != 1 || members[0].Conns != 1<<30 || members[0].Client == "" || members[0].Ignored != "" {
		t.Fatalf("members: %+v", members)
	}
}

type fakeLocal struct{ conns int }

func (f fakeLocal) Local() (int, string) { return f.conns, StateDraining }
func (fakeLocal) TakeOver(string, int64) {}

// Without a key a node clusters only when told that the network is
// trusted.
func TestStartNeedsAKeyOrInsecure(t *testing.T) {
	_, err := Start(Options{Bind: "127.0.0.1:0", Logger: zerolog.Nop()}, idle{})
	if !errors.Is(err, ErrNoKey) {
		t.Fatalf("started without a key: %v", err)
	}
	start(t, Options{Insecure: true}, idle{})
}

func TestParseMeta(t *testing.T) {
	for _, tc := range []struct {
		meta, problem string
	}{
		{`{"a":"10.0.0.7:5000","c":1200,"s":"ready","v":"v1.2.0","n":7}`, ""},
		{`{"a":"[2001:db8::1]:5000","c":0,"s":"draining"}`, ""},
		{`{"a":"10.0.0.7:5000","c":0,"s":"ready","future":[1,2]}`, ""}, // a newer node's field
		{``, "no metadata"},
		{`null`, "not a JSON object"},
		{`[1]`, "not a JSON object"},
		{`{"a":"10.0.0.7:5000","c":"12","s":"ready"}`, "shape"},
		{`{"a":"10.0.0.7:5000","c":1.5,"s":"ready"}`, "shape"},
		{`{"a":"10.0.0.7:5000","s":"ready"}`, "no connection count"},
		{`{"a":"10.0.0.7:5000","c":-1,"s":"ready"}`, "outside"},
		{`{"a":"10.0.0.7:5000","c":10000001,"s":"ready"}`, "outside"},
		{`{"a":"10.0.0.7:5000","c":3}`, "state"},
		{`{"a":"10.0.0.7:5000","c":3,"s":"sleeping"}`, "state"},
		{`{"c":0,"s":"ready"}`, "no client address"},
		{`{"a":"example.com:5000","c":0,"s":"ready"}`, "client address"},
		{`{"a":"10.0.0.7:0","c":0,"s":"ready"}`, "client address"},
		{`{"a":"10.0.0.7:5000","c":0,"s":"ready","v":` + strings.Repeat(" ", 500) + `"x"}`, "over 512"},
	} {
		_, err := parseMeta([]byte(tc.meta))
		if tc.problem == "" && err != nil || tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)) {
			t.Errorf("%.60s: %v, want %q", tc.meta, err, tc.problem)
		}
	}
}

func TestWireFormat(t *testing.T) {
	msg := appendHeader(nil, "node-a")
	msg = appendTakeover(msg, "0f4b0e7c-3a1e-4f67", 1732540800123456789)
	msg = append(msg, 0x7f, 3, 'x', 'y', 'z') // a kind from a newer node
	msg = appendTakeover(msg, "d2", -5)
	r := newRecorder()
	c := &Cluster{handler: r, metrics: newMetrics(nil)}
	c.receive(msg)
	if !slices.Equal(r.devices, []string{"0f4b0e7c-3a1e-4f67", "d2"}) {
		t.Fatalf("got %v", r.devices)
	}
	sender, _, err := splitHeader(msg)
	if err != nil || sender != "node-a" {
		t.Fatalf("header: %q %v", sender, err)
	}
	for _, bad := range [][]byte{
		nil, {wireVersion}, {1, 2, 'a', 'b'}, // the unbatched version 1
		{wireVersion, 0}, {wireVersion, 9, 'a'}, {wireVersion, 1, 'a', 1}, {wireVersion, 1, 'a', 1, 200},
		{wireVersion, 1, 'a', 1, 3, 0, 0, 0}, // a takeover without a device
	} {
		r := newRecorder()
		c := &Cluster{handler: r, metrics: newMetrics(nil)}
		c.receive(bad)
		if len(r.devices) != 0 {
			t.Errorf("%q delivered %v", bad, r.devices)
		}
	}
}

func FuzzReceive(f *testing.F) {
	f.Add(appendTakeover(appendHeader(nil, "a"), "device", 1))
	f.Add([]byte{wireVersion, 1, 'a', 0x7f, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := &Cluster{handler: idle{}, metrics: newMetrics(nil)}
		c.receive(msg)
	})
}

// A burst of takeovers, as when a drained node's clients log in again
// elsewhere, reaches the other node complete, in few sends.
func TestTakeoverBurstIsBatched(t *testing.T) {
	const burst = 5000
	key := newKey(t)
	reg := prometheus.NewRegistry()
	a := start(t, Options{Key: key, Registerer: reg}, idle{})
	r := newRecorder()
	b := start(t, Options{Key: key, Join: []string{a.Addr()}}, r)
	eventually(t, 5*time.Second, "a knows b", func() bool { _, ok := memberOf(a, b.Name()); return ok })

	// A takeover after a quiet spell goes at once, in a send of its own.
	a.BroadcastTakeover("alone", time.Now().UnixNano())
	r.wait(t, 1, 10*time.Second)
	t.Logf("a lone takeover arrived after %v", r.delays[0])
	r.mu.Lock()
	r.devices, r.delays = nil, nil
	r.mu.Unlock()

	began := time.Now()
	for i := range burst {
		a.BroadcastTakeover(fmt.Sprintf("device-%05d", i), time.Now().UnixNano())
	}
	queued := time.Since(began)
	r.wait(t, burst, 20*time.Second)
	all := time.Since(began)
	// Batches travel on connections of their own and may be handled out
	// of order; each takeover carries its login time, so order is moot.
	got := slices.Sorted(slices.Values(r.devices))
	for i, d := range got {
		if want := fmt.Sprintf("device-%05d", i); d != want {
			t.Fatalf("takeover %d is %s, want %s", i, d, want)
		}
	}
	sends := counter(t, reg, "kronos_cluster_sends_total", "result", "ok") - 1 // the lone one
	// The bound holds unless queueing 5,000 records takes over a second.
	if sends > burst/100 {
		t.Errorf("%d takeovers took %v sends, want at most %d", burst, sends, burst/100)
	}
	t.Logf("%d takeovers: queued in %v, all delivered after %v, in %v sends; delay p50 %v, p99 %v, max %v",
		burst, queued, all, sends, percentile(r.delays, 0.5), percentile(r.delays, 0.99), percentile(r.delays, 1))

}

// Leave waits for every sender; nothing of the cluster runs afterwards.
func TestLeaveStopsEverySender(t *testing.T) {
	before := runtime.NumGoroutine()
	key := newKey(t)
	r := newRecorder()
	a := start(t, Options{Key: key}, r)
	b := start(t, Options{Key: key, Join: []string{a.Addr()}}, r)
	c := start(t, Options{Key: key, Join: []string{a.Addr()}}, r)
	for _, m := range []*Cluster{a, b, c} {
		eventually(t, 5*time.Second, "three members", func() bool { return len(m.Members()) == 3 })
	}
	for _, m := range []*Cluster{a, b, c} {
		m.BroadcastTakeover("d-"+m.Name(), 1)
	}
	r.wait(t, 6, 10*time.Second)
	b.BroadcastTakeover("queued-at-leave", 2)
	// One at a time: memberlist's Leave waits for its broadcast to reach
	// a node it believes alive, and gives up if that node left meanwhile.
	for i, m := range []*Cluster{b, a, c} {
		if err := m.Leave(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			eventually(t, 10*time.Second, "c alone", func() bool { return len(c.Members()) == 1 })
		}
	}
	if n := goroutines("cluster.(*peer).run"); n > 0 {
		t.Fatalf("%d senders still running after every node left", n)
	}
	if got := r.count(); got < 8 { // b's last takeover went to a and c before b left
		t.Errorf("%d takeovers arrived, want 8", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after leaving, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func goroutines(fn string) int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), fn)
}

// A peer that does not take its messages loses the oldest ones, never
// blocks the login path, and gets the rest in batches within the limit.
func TestQueueDropsOldestWhenAPeerIsStuck(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := &Cluster{opts: Options{NodeName: "a"}, log: zerolog.Nop(), metrics: newMetrics(reg),
		limits: sendLimits{interval: time.Millisecond, batch: 300, queue: 1000}, stop: make(chan struct{})}
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var mu sync.Mutex
	var got []string
	c.send = func(_ *memberlist.Node, msg []byte) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
		if len(msg) > 300+10 {
			t.Errorf("a batch of %d bytes", len(msg))
		}
		_, records, err := splitHeader(msg)
		for err == nil && len(records) > 0 {
			var body []byte
			_, body, records, err = nextRecord(records)
			device, _, _ := parseTakeover(body)
			mu.Lock()
			got = append(got, device)
			mu.Unlock()
		}
		return err
	}
	p := newPeer(c, memberlist.Node{Name: "b"})
	c.done.Add(1)
	go p.run()
	rec := func(i int) []byte { return appendTakeover(nil, fmt.Sprintf("d%03d", i), 1) }
	p.enqueue(rec(0))
	<-entered // the sender is stuck in its first send
	const more = 100
	for i := 1; i <= more; i++ {
		p.enqueue(rec(i))
	}
	dropped := int(counter(t, reg, "kronos_cluster_messages_dropped_total", "reason", "queue_full"))
	kept := more - dropped
	if dropped == 0 || kept*len(rec(1)) > 1000 {
		t.Fatalf("%d dropped, %d kept", dropped, kept)
	}
	close(release)
	eventually(t, 10*time.Second, "the kept takeovers sent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1+kept
	})
	close(c.stop)
	c.done.Wait()
	want := []string{"d000"}
	for i := more - kept + 1; i <= more; i++ {
		want = append(want, fmt.Sprintf("d%03d", i))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sent %v\nwant %v", got, want)
	}
}

// A member that has no key, or another key, cannot join a cluster with a
// key, nor get a message through.
func TestKeyKeepsStrangersOut(t *testing.T) {
	var logs syncBuffer
	r := newRecorder()
	a := start(t, Options{Key: newKey(t), Logger: zerolog.New(&logs).Level(zerolog.DebugLevel)}, r)
	meta := []byte(`{"a":"127.0.0.1:5000","c":0,"s":"ready","n":1}`)
	for name, key := range map[string][]byte{"keyless": nil, "other-key": newKey(t)} {
		s := gossiptest.Start(t, gossiptest.Options{Name: name, Key: key, Meta: meta})
		if err := s.Join(a.Addr()); err == nil {
			t.Errorf("%s joined", name)
		}
		if n := s.List.NumMembers(); n != 1 {
			t.Errorf("%s sees %d members", name, n)
		}
		msg := appendTakeover(appendHeader(nil, name), "victim", time.Now().UnixNano())
		if err := s.List.SendReliable(gossiptest.Node(t, a.Name(), a.Addr()), msg); err != nil {
			t.Fatal(err)
		}
	}
	// memberlist logs each refused stream; both refused, nothing delivered.
	eventually(t, 10*time.Second, "two streams refused", func() bool {
		return strings.Count(logs.String(), "failed to receive") >= 4 // two joins, two messages
	})
	if len(a.Members()) != 1 || r.count() != 0 {
		t.Fatalf("members %+v; %d takeovers delivered", a.Members(), r.count())
	}
}

// Without a key (Insecure), messages are accepted from members only, by
// name: a stranger that has not joined is refused. One that has joined is
// a member, and may close a device's connections if it knows its id.
func TestInsecureAcceptsMessagesFromMembersOnly(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := newRecorder()
	a := start(t, Options{Insecure: true, Registerer: reg}, r)
	to := gossiptest.Node(t, a.Name(), a.Addr())
	outsider := gossiptest.Start(t, gossiptest.Options{Name: "outsider"})
	if err := outsider.List.SendReliable(to, appendTakeover(appendHeader(nil, "outsider"), "victim", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the outsider refused", func() bool {
		return counter(t, reg, "kronos_cluster_messages_rejected_total", "reason", "not_member") == 1
	})
	joined := gossiptest.Start(t, gossiptest.Options{Name: "joined", Meta: []byte(`{"a":"127.0.0.1:5000","c":0,"s":"ready"}`)})
	if err := joined.Join(a.Addr()); err != nil {
		t.Fatal(err)
	}
	// memberlist answers a join before it merges it.
	eventually(t, 10*time.Second, "the stranger a member", func() bool { _, ok := memberOf(a, "joined"); return ok })
	if err := joined.List.SendReliable(to, appendTakeover(appendHeader(nil, "joined"), "victim", 1)); err != nil {
		t.Fatal(err)
	}
	r.wait(t, 1, 10*time.Second)
	if r.count() != 1 {
		t.Fatalf("%d takeovers delivered", r.count())
	}
}

// Without a key (Insecure), strangers can join and gossip anything: their
// figures count only if valid and seen to change.
func TestStrangersFiguresAreJudged(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := start(t, Options{Insecure: true, Registerer: reg}, idle{})
	attack := gossiptest.Start(t, gossiptest.Options{Name: "attack", Meta: []byte(`{"c":0,"s":"ready"}`)})
	static := gossiptest.Start(t, gossiptest.Options{Name: "static", Meta: []byte(`{"a":"127.0.0.1:5000","c":0,"s":"ready","n":1}`)})
	fresh := gossiptest.Start(t, gossiptest.Options{Name: "fresh"})
	fresh.Heartbeat(100*time.Millisecond, func(i int) []byte {
		return fmt.Appendf(nil, `{"a":"127.0.0.1:5000","c":0,"s":"ready","n":%d}`, i)
	})
	for _, s := range []*gossiptest.Member{attack, static, fresh} {
		if err := s.Join(a.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "each stranger judged", func() bool {
		at, _ := memberOf(a, "attack")
		st, _ := memberOf(a, "static")
		fr, ok := memberOf(a, "fresh")
		return strings.HasPrefix(at.Ignored, "invalid metadata: no client address") &&
			strings.HasPrefix(st.Ignored, "stale") && ok && fr.Ignored == ""
	})
	if !a.Peers() {
		t.Error("the fresh stranger is not counted as a peer")
	}
	a.Update(0, StateReady)
	if n := counter(t, reg, "kronos_cluster_members", "state", "invalid"); n != 1 {
		t.Errorf("members with invalid metadata: %v", n)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A batch whose send fails is sent once more, then dropped.
func TestFailedSendIsRetriedOnce(t *testing.T) {
	for _, failures := range []int{1, 2} {
		reg := prometheus.NewRegistry()
		c := &Cluster{opts: Options{NodeName: "a"}, log: zerolog.Nop(), metrics: newMetrics(reg),
			limits: defaultLimits, stop: make(chan struct{})}
		attempts := make(chan int, 4)
		n := 0
		c.send = func(*memberlist.Node, []byte) error {
			n++
			attempts <- n
			if n <= failures {
				return errors.New("i/o timeout")
			}
			return nil
		}
		p := newPeer(c, memberlist.Node{Name: "b"})
		c.done.Add(1)
		go p.run()
		p.enqueue(appendTakeover(nil, "d", 1))
		<-attempts
		<-attempts
		close(c.stop)
		c.done.Wait()
		sent := counter(t, reg, "kronos_cluster_messages_sent_total")
		dropped := counter(t, reg, "kronos_cluster_messages_dropped_total", "reason", "send_failed")
		if failures == 1 && (sent != 1 || dropped != 0) || failures == 2 && (sent != 0 || dropped != 1) || n != 2 {
			t.Errorf("%d failures: %d attempts, %v sent, %v dropped", failures, n, sent, dropped)
		}
	}
}
