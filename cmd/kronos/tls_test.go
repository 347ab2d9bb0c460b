package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/testcert"
	"github.com/kronos-sync/kronos-server/node/client"
)

// The real binary behind a PROXY-protocol balancer with TLS required: a raw
// TCP device and a WebSocket device of one user sync over TLS, a plain
// connection is refused, and the certificate is rotated under it.
func TestServeTLSBehindProxyProtocol(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	roots := testcert.Write(t, certFile, keyFile, 1)
	srv := startServer(t, "--store", "bolt:"+filepath.Join(dir, "kronos.db"),
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-required", "--proxy-protocol")
	ctx := testContext(t)

	dialVia := func(transport client.Transport, from string, roots *x509.CertPool) (*client.Client, error) {
		raw, err := net.Dial("tcp", srv.addr)
		if err != nil {
			return nil, err
		}
		if _, err := raw.Write([]byte("PROXY TCP4 " + from + " 10.0.0.1 40000 5000\r\n")); err != nil {
			return nil, err
		}
		c := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		return client.Over(ctx, transport, c, srv.addr)
	}

	writer, err := dialVia(client.TCP, "203.0.113.1", roots)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	login, err := writer.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := dialVia(client.WebSocket, "203.0.113.2", roots)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	if _, err := watcher.Login(login.Str("user_id"), "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := writer.SendRaw([]byte(`{"type":"create","task":{"id":1,"desc":"over TLS"},"version":1800000000000}`)); err != nil {
		t.Fatal(err)
	}
	m, err := watcher.Next(5 * time.Second)
	if err != nil || m.Type() != "create" {
		t.Fatalf("notification %v, %v", m, err)
	}

	// Plain JSON after the header: refused, nothing answered.
	plain, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plain.Write([]byte("PROXY TCP4 203.0.113.3 10.0.0.1 40000 5000\r\n{\"type\":\"login\"}"))
	plain.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := plain.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("plain connection answered (%d bytes, %v)", n, err)
	}

	// cert-manager rotates the certificate: new connections get the new one.
	newRoots := testcert.Write(t, certFile, keyFile, 2)
	srv.logs.waitFor(t, "TLS certificate reloaded", 10*time.Second)
	c, err := dialVia(client.TCP, "203.0.113.4", newRoots)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
