package conn

// PROXY protocol (v1 text, v2 binary) on the client port: a TCP load
// balancer (AWS or GCP network load balancers, HAProxy) tells the node who
// the client is, so that per-address limits and logs see the client instead
// of the balancer. With Options.ProxyProtocol every connection must start
// with a header: accepting it optionally would let any client claim any
// address.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"

	proxyproto "github.com/pires/go-proxyproto"
)

var (
	proxyV1Prefix = []byte("PROXY ")
	proxyV2Sig    = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

const (
	proxyV1Max = 107 // the longest v1 line, CRLF included (the specification's figure)
	// proxyV2Max bounds a v2 header with its TLVs; balancers send tens of
	// bytes (AWS adds a VPC endpoint id), and this keeps a stranger from
	// making the node buffer 64 KiB before the first message.
	proxyV2Max = 16 + 2048
)

// proxyHeaderLen returns the length of the PROXY header at the start of p
// once p holds all of it, 0 while more is needed, and -1 if p does not
// start with a valid header.
func proxyHeaderLen(p []byte) int {
	switch {
	case startsLike(p, proxyV1Prefix):
		if len(p) < len(proxyV1Prefix) {
			return 0
		}
		if i := bytes.Index(p[:min(len(p), proxyV1Max)], []byte("\r\n")); i >= 0 {
			return i + 2
		}
		if len(p) >= proxyV1Max {
			return -1
		}
		return 0
	case startsLike(p, proxyV2Sig):
		if len(p) < 16 {
			return 0
		}
		n := 16 + int(binary.BigEndian.Uint16(p[14:16]))
		switch {
		case n > proxyV2Max:
			return -1
		case len(p) < n:
			return 0
		}
		return n
	}
	return -1
}

// startsLike reports whether p and prefix agree on their common length.
func startsLike(p, prefix []byte) bool {
	n := min(len(p), len(prefix))
	return bytes.Equal(p[:n], prefix[:n])
}

// readProxyHeader takes the PROXY header from the start of p. It returns
// the bytes used (0: wait for more) and false when the connection is refused:
// no valid header, or its client address is over MaxConnsPerIP.
func (c *Conn) readProxyHeader(p []byte) (int, bool) {
	n := proxyHeaderLen(p)
	if n == 0 {
		return 0, true
	}
	var hdr *proxyproto.Header
	var err error
	if n > 0 {
		hdr, err = proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(p[:n]), max(n, 16)))
	}
	if n < 0 || err != nil {
		c.srv.metrics.proxyHeaders.WithLabelValues("invalid").Inc()
		c.refuse(ReasonProxyProtocol)
		return len(p), false
	}
	c.proxyDone = true
	// LOCAL (the balancer's own health check) and unknown families keep
	// the socket's address.
	if hdr.Command.IsProxy() {
		if src, ok := hdr.SourceAddr.(*net.TCPAddr); ok {
			if ap, ok := netip.AddrFromSlice(src.IP); ok {
				c.remote = netip.AddrPortFrom(ap.Unmap(), uint16(src.Port))
			}
		}
	}
	c.srv.metrics.proxyHeaders.WithLabelValues("ok").Inc()
	if !c.srv.admitAddr(c) {
		c.refuse(ReasonPolicy)
		return len(p), false
	}
	return n, true
}

// refuse closes a connection that is refused before its transport is known;
// there is nobody to answer in a protocol yet.
func (c *Conn) refuse(reason CloseReason) {
	c.markClosing(reason)
	c.discardIn = true
	c.closeAfterSend(nil)
}
