package conn

import (
	"net"
	"net/netip"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

func proxyV2(t *testing.T, src string) []byte {
	t.Helper()
	ap := netip.MustParseAddrPort(src)
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(ap), &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5000})
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProxyProtocolGivesTheClientAddress(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{ProxyProtocol: true})
		for _, tc := range []struct {
			name   string
			header []byte
			want   string
		}{
			{"v1", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40000 5000\r\n"), "203.0.113.7:40000"},
			{"v1 IPv6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 40001 5000\r\n"), "[2001:db8::7]:40001"},
			{"v2", proxyV2(t, "198.51.100.9:40002"), "198.51.100.9:40002"},
		} {
			// Byte by byte, as a slow balancer might: the header and the
			// message are cut anywhere.
			c := dial(t, s)
			for _, b := range append(tc.header, `{"type":"login"}`...) {
				write(t, c, []byte{b})
			}
			m := r.message(t)
			if m.data != `{"type":"login"}` || m.c.RemoteAddr().String() != tc.want {
				t.Fatalf("%s: %q from %v, want %s", tc.name, m.data, m.c.RemoteAddr(), tc.want)
			}
		}

		// A balancer's health check (v1 UNKNOWN) keeps the socket's address.
		c := dial(t, s)
		write(t, c, []byte("PROXY UNKNOWN\r\n{}"))
		if m := r.message(t); m.c.RemoteAddr().Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("UNKNOWN gave %v", m.c.RemoteAddr())
		}
	})
}

func TestProxyProtocolIsRequiredWhenOn(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{ProxyProtocol: true})
		for _, input := range []string{
			`{"type":"login"}`,                        // no header
			"PROXY TCP4 nonsense\r\n{}",               // a bad v1 line
			"PROXY TCP4 " + string(make([]byte, 200)), // no CRLF within 107 bytes
			"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  // v2 longer than the node takes
		} {
			c := dial(t, s)
			write(t, c, []byte(input))
			if got := readToEOF(t, c); len(got) != 0 {
				t.Fatalf("%q answered %q", input, got)
			}
			if got := r.closed(t); got.reason != ReasonProxyProtocol {
				t.Fatalf("%q: closed with %v", input, got.reason)
			}
		}
		r.noEvents(t)
	})
}

// Per-address limits count the client the header names, not the balancer.
func TestProxyProtocolAddressLimits(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{ProxyProtocol: true, MaxConnsPerIP: 1})
		first := dial(t, s)
		write(t, first, []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40000 5000\r\n{}"))
		r.message(t)

		again := dial(t, s)
		write(t, again, []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40001 5000\r\n{}"))
		readToEOF(t, again)
		if got := r.closed(t); got.reason != ReasonPolicy {
			t.Fatalf("closed with %v", got.reason)
		}

		other := dial(t, s)
		write(t, other, []byte("PROXY TCP4 203.0.113.8 10.0.0.1 40002 5000\r\n{}"))
		r.message(t)

		// Once the first client leaves, its address may connect again.
		first.Close()
		r.closed(t)
		back := dial(t, s)
		write(t, back, []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40003 5000\r\n{}"))
		r.message(t)
	})
}

func TestProxyProtocolThenTLS(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s := serveTLS(t, engine, Options{ProxyProtocol: true, TLSRequired: true})
		raw := dial(t, s.Server)
		write(t, raw, proxyV2(t, "192.0.2.44:1234"))
		c := tlsClient(raw, s)
		write(t, c, []byte(`{}`))
		if m := s.r.message(t); !m.c.TLS() || m.c.RemoteAddr().String() != "192.0.2.44:1234" {
			t.Fatalf("TLS %v from %v", m.c.TLS(), m.c.RemoteAddr())
		}
	})
}
