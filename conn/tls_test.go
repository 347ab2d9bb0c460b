package conn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/kronos-sync/kronos-server/internal/testcert"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type tlsServer struct {
	*Server
	r        *recorder
	roots    *x509.CertPool
	certFile string
	keyFile  string
}

func serveTLS(t *testing.T, engine string, opts Options) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	ts := &tlsServer{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	ts.roots = testcert.Write(t, ts.certFile, ts.keyFile, 1)
	opts.TLSCertFile, opts.TLSKeyFile = ts.certFile, ts.keyFile
	ts.Server, ts.r = serve(t, engine, opts)
	return ts
}

func (s *tlsServer) dialTLS(t *testing.T) *tls.Conn {
	t.Helper()
	c := tlsClient(dial(t, s.Server), s)
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c
}

func tlsClient(raw net.Conn, s *tlsServer) *tls.Conn {
	return tls.Client(raw, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
}

func (s *tlsServer) dialWSS(t *testing.T) *wsClient {
	t.Helper()
	c := s.dialTLS(t)
	d := ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
	_, br, _, err := d.Dial(context.Background(), "ws://"+s.Addr().String()+"/")
	if err != nil {
		t.Fatal(err)
	}
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &wsClient{c, br}
}

func TestTLSRawTCPAndWebSocket(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s := serveTLS(t, engine, Options{})

		c := s.dialTLS(t)
		write(t, c, []byte(`{"type":"login"}`))
		m := s.r.message(t)
		if m.data != `{"type":"login"}` || m.c.Transport() != TransportTCP || !m.c.TLS() {
			t.Fatalf("got %q over %v, TLS %v", m.data, m.c.Transport(), m.c.TLS())
		}
		m.c.Send([]byte(`{"ok":1}`))
		m.c.SendShared(NewShared([]byte(`{"shared":1}`))) // encrypted too, not queued as it is
		br := bufio.NewReader(c)
		for _, want := range []string{"{\"ok\":1}\n", "{\"shared\":1}\n"} {
			if line, err := br.ReadString('\n'); err != nil || line != want {
				t.Fatalf("answer %q, %v", line, err)
			}
		}

		w := s.dialWSS(t)
		w.send(t, true, ws.OpText, []byte(`{"type":"read-all"}`))
		m = s.r.message(t)
		if m.data != `{"type":"read-all"}` || m.c.Transport() != TransportWebSocket || !m.c.TLS() {
			t.Fatalf("got %q over %v, TLS %v", m.data, m.c.Transport(), m.c.TLS())
		}
		m.c.Send([]byte(`{"ok":2}`))
		if f := w.frame(t); f.Header.OpCode != ws.OpText || string(f.Payload) != `{"ok":2}` {
			t.Fatalf("frame %v %q", f.Header.OpCode, f.Payload)
		}
		m.c.Close(ReasonPolicy)
		if code := w.closeCode(t); code != ws.StatusPolicyViolation {
			t.Fatalf("close code %d", code)
		}
	})
}

// Large messages cross many TLS records and reads both ways, and several
// messages share records.
func TestTLSLargeMessagesBothWays(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s := serveTLS(t, engine, Options{})
		c := s.dialTLS(t)
		big := `{"x":"` + strings.Repeat("k", 1<<20) + `"}`
		write(t, c, []byte(big+`{"a":1}`+big))
		for _, want := range []string{big, `{"a":1}`, big} {
			if m := s.r.message(t); m.data != want {
				t.Fatalf("got %d bytes, want %d", len(m.data), len(want))
			}
		}
		write(t, c, []byte(`{}`))
		sc := s.r.message(t).c
		for range 3 {
			sc.Send([]byte(big))
		}
		br := bufio.NewReaderSize(c, 1<<16)
		for range 3 {
			line, err := br.ReadString('\n')
			if err != nil || line != big+"\n" {
				t.Fatalf("read %d bytes, %v", len(line), err)
			}
		}
	})
}

func TestPlainBesideTLSAndTLSRequired(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s := serveTLS(t, engine, Options{})
		c := dial(t, s.Server)
		write(t, c, []byte(`{"plain":true}`))
		if m := s.r.message(t); m.c.TLS() || m.c.Transport() != TransportTCP {
			t.Fatalf("plain connection seen as TLS %v over %v", m.c.TLS(), m.c.Transport())
		}

		req := serveTLS(t, engine, Options{TLSRequired: true})
		c = dial(t, req.Server)
		write(t, c, []byte(`{"plain":true}`))
		if got := readToEOF(t, c); len(got) != 0 {
			t.Fatalf("plain connection answered %q", got)
		}
		if got := req.r.closed(t); got.reason != ReasonTLSRequired {
			t.Fatalf("closed with %v", got.reason)
		}
		req.r.noEvents(t)
		// TLS still works there.
		write(t, req.dialTLS(t), []byte(`{}`))
		req.r.message(t)
	})
}

func TestTLSBadHandshakeAndSilentHandshake(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s := serveTLS(t, engine, Options{})

		// A TLS record header, then garbage: crypto/tls refuses it.
		c := dial(t, s.Server)
		write(t, c, append([]byte{0x16, 0x03, 0x01, 0x00, 0x05}, "hello"...))
		readToEOF(t, c)
		if got := s.r.closed(t); got.reason != ReasonTLSError {
			t.Fatalf("closed with %v", got.reason)
		}

		// Half a ClientHello, then silence: the handshake deadline ends it.
		s = serveTLS(t, engine, Options{HandshakeTimeout: time.Millisecond})
		hello := clientHello(t)
		c = dial(t, s.Server)
		write(t, c, hello[:len(hello)/2])
		readToEOF(t, c)
		if got := s.r.closed(t); got.reason != ReasonTimeout {
			t.Fatalf("closed with %v", got.reason)
		}
		s.r.noEvents(t)
	})
}

// clientHello records the first flight of a real TLS client.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "x"}).Handshake()
	b.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil || n < 10 || buf[0] != tlsRecordHandshake {
		t.Fatalf("client hello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

func TestShutdownDuringTLSHandshake(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		r := newRecorder()
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "c"), filepath.Join(dir, "k")
		testcert.Write(t, certFile, keyFile, 1)
		s, err := Listen(Options{Listen: "127.0.0.1:0", Engine: engine, TLSCertFile: certFile, TLSKeyFile: keyFile}, r)
		if err != nil {
			t.Fatal(err)
		}
		hello := clientHello(t)
		c := dial(t, s)
		write(t, c, hello[:len(hello)/2])
		waitUntil(t, func() bool { return s.Count() == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Shutdown(ctx, ReasonShutdown) // must return: the handshake ends with it
		if got := r.closed(t); got.reason != ReasonShutdown || r.closeCount(got.c) != 1 {
			t.Fatalf("closed with %v, %d times", got.reason, r.closeCount(got.c))
		}
	})
}

func TestTLSCertificateIsReloaded(t *testing.T) {
	s := serveTLS(t, EngineEpoll, Options{})
	serial := func(roots *x509.CertPool) int64 {
		c := tls.Client(dial(t, s.Server), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
		defer c.Close()
		if err := c.Handshake(); err != nil {
			return -1 // not the certificate these roots trust (yet)
		}
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(s.roots); got != 1 {
		t.Fatalf("serial %d", got)
	}
	// A bad pair (the key of another certificate) keeps the old one.
	os.WriteFile(s.keyFile, []byte("not a key"), 0o600)
	waitUntil(t, func() bool { return testutil.ToFloat64(s.metrics.tlsReloads.WithLabelValues("error")) == 1 })
	if got := serial(s.roots); got != 1 {
		t.Fatalf("serial %d after a bad rotation", got)
	}
	roots := testcert.Write(t, s.certFile, s.keyFile, 2)
	waitUntil(t, func() bool { return serial(roots) == 2 })
}

// On TLS each pong is a sealed record of its own, so pongs are not merged:
// there the queue's limit, counting each record's slot, cuts a client that
// pings and never reads.
func TestTLSPingFloodStaysWithinQueueLimit(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		const limit = 4 << 20
		s := serveTLS(t, engine, Options{MaxQueueBytes: limit})
		w := s.dialWSS(t)
		w.send(t, true, ws.OpText, []byte(`{}`))
		conn := s.r.message(t).c
		// Half the limit queued: more than the kernel's buffers may still
		// take as they grow, so the pongs queue too.
		filler := bytes.Repeat([]byte{'x'}, 16<<10)
		for conn.QueuedBytes() < limit/2 {
			if !conn.Send(filler) {
				t.Fatal("send refused")
			}
		}
		var flood bytes.Buffer
		for range 40000 { // with their records' slots, past the other half
			flood.Write(clientFrame(true, ws.OpPing, nil))
		}
		go w.Write(flood.Bytes()) // the node may cut it before it has read all
		if got := s.r.closed(t); got.reason != ReasonSlowConsumer {
			t.Fatalf("closed with %v, want slow_consumer", got.reason)
		}
	})
}
