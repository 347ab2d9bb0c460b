package conn

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// countHandler counts messages and signals every target-th one.
type countHandler struct {
	n      atomic.Int64
	target int64
	done   chan struct{}
}

func (h *countHandler) OnMessage(*Conn, []byte) {
	if h.n.Add(1) == h.target {
		h.done <- struct{}{}
	}
}
func (h *countHandler) OnFramingError(*Conn, error) {}
func (h *countHandler) OnClose(*Conn, CloseReason)  {}

func benchServer(b *testing.B, h Handler, engine string) *Server {
	b.Helper()
	s, err := Listen(Options{Listen: "127.0.0.1:0", Engine: engine, Logger: zerolog.Nop()}, h)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Shutdown(b.Context(), ReasonShutdown) })
	return s
}

var vimStream = []byte(`{"type":"login","user_id":"","device_id":"","version":""}{"type":"create","task":{"id":1,"desc":"a } \" {","tags":["x"]},"version":1732540800123}{"type":"read-all"}`)

// BenchmarkJSONFramer: cutting requests out of a raw stream with no
// separators, the Vim client's habit.
func BenchmarkJSONFramer(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(vimStream)))
	var s jsonScanner
	for b.Loop() {
		p := vimStream
		for {
			_, end, res := s.next(p)
			if res != scanValue {
				break
			}
			p = p[end:]
		}
	}
}

// BenchmarkReadPath: requests written to a real socket, through epoll, a
// worker's read, the framer, to the handler.
func BenchmarkReadPath(b *testing.B) {
	for _, engine := range []string{EngineEpoll, EngineGoroutine} {
		b.Run(engine, func(b *testing.B) {
			const batch = 100
			h := &countHandler{done: make(chan struct{}, 1)}
			s := benchServer(b, h, engine)
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := []byte(`{"type":"update","task":{"id":1,"sent":1732540800123456789},"version":1732540800123}`)
			payload := bytes.Repeat(msg, batch)
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				h.target = h.n.Load() + batch
				if _, err := c.Write(payload); err != nil {
					b.Fatal(err)
				}
				select {
				case <-h.done:
				case <-time.After(10 * time.Second):
					b.Fatal("messages did not arrive")
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkSend: one payload queued to many connections (the fan-out of a
// notification), written through to the sockets.
func BenchmarkSend(b *testing.B) {
	const conns = 64
	var accepted []*Conn
	h := &acceptRecorder{conns: make(chan *Conn, conns)}
	s := benchServer(b, h, EngineEpoll)
	for range conns {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		go io.Copy(io.Discard, c)
		c.Write([]byte(`{}`)) // sniffed as raw TCP
	}
	for range conns {
		accepted = append(accepted, <-h.conns)
	}
	payload := []byte(`{"success":true,"type":"update","task":{"id":1,"desc":"bench"},"device_id":"0f4b0e7c-3a1e-4f67-9a41-1f6f8a7d2c11","version":1732540800123}`)
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range accepted {
			if !c.Send(payload) {
				b.Fatal("send refused")
			}
		}
	}
	b.ReportMetric(float64(b.N*conns)/b.Elapsed().Seconds(), "sends/s")
}

type acceptRecorder struct{ conns chan *Conn }

func (a *acceptRecorder) OnMessage(c *Conn, _ []byte) {
	if c.Context() == nil {
		c.SetContext(true)
		a.conns <- c
	}
}
func (a *acceptRecorder) OnFramingError(*Conn, error) {}
func (a *acceptRecorder) OnClose(*Conn, CloseReason)  {}

// BenchmarkOnDataSplit: requests that arrive cut in three reads, so every
// one is kept in c.in (grown, then released) before it is whole: the path
// the input budget accounts on.
func BenchmarkOnDataSplit(b *testing.B) {
	h := &countHandler{done: make(chan struct{}, 1)}
	opts := Options{}
	opts.setDefaults()
	s := &Server{opts: opts, handler: h, metrics: pairMetrics, engine: nopEngine{}, conns: map[int]*Conn{}}
	c := &Conn{fd: -1, srv: s}
	c.setTransport(TransportTCP)
	msg := []byte(`{"type":"write-all","version":1732540800123,"tasks":[` + string(bytes.Repeat([]byte(`{"id":1,"desc":"a task of some length"},`), 50)) + `{"id":2}]}`)
	third := len(msg) / 3
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		c.onData(msg[:third])
		c.onData(msg[third : 2*third])
		c.onData(msg[2*third:])
	}
	if h.n.Load() == 0 {
		b.Fatal("no message cut")
	}
}
