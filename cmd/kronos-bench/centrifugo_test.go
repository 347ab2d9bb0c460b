package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	kclient "github.com/kronos-sync/kronos-server/node/client"
)

// installCentrifugo returns a centrifugo binary: $KRONOS_BENCH_CENTRIFUGO
// if set, else one built by `go install` into a temporary directory. The
// install is bounded to leave the test its time to run; it skips the test,
// saying why, when it cannot finish (no module proxy, a cold build cache
// on a slow machine).
func installCentrifugo(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("KRONOS_BENCH_CENTRIFUGO"); bin != "" {
		return bin
	}
	if testing.Short() {
		t.Skip("-short: installing Centrifugo takes minutes")
	}
	budget := 20 * time.Minute
	if d, ok := t.Deadline(); ok {
		budget = time.Until(d) - 3*time.Minute // the run itself takes under a minute
	}
	if budget <= 0 {
		t.Skipf("no time left under -timeout to install %s", centrifugoModule)
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "install", centrifugoModule)
	// Outside any module or workspace: pkg@version builds the module alone.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			t.Skipf("go install %s did not finish within %v (cold build cache?); set KRONOS_BENCH_CENTRIFUGO to a built binary", centrifugoModule, budget.Round(time.Second))
		}
		t.Skipf("cannot install %s: %v\n%s", centrifugoModule, err, out)
	}
	return filepath.Join(dir, "centrifugo")
}

// freePort returns a loopback port that was free a moment ago: Centrifugo
// cannot be asked for port 0 and say which it took.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitListening polls addr until it accepts a connection.
func waitListening(t *testing.T, addr string, exited <-chan struct{}) {
	t.Helper()
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatal("centrifugo exited")
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("nothing listens on %s", addr)
}

// The load tool against a real Centrifugo, as compare.sh runs it, in the
// small configuration of TestBenchSmallRun: every connection, every
// phase, every publication delivered to every device of its user.
func TestBenchCentrifugo(t *testing.T) {
	centrifugo := installCentrifugo(t)
	dir := t.TempDir()
	bench := build(t, dir, "kronos-bench", ".")
	port, internal := freePort(t), freePort(t)
	const secret = "kronos-bench-test-secret"
	cfg, _ := json.Marshal(centrifugoConfig(secret, port, internal))
	cfgPath := filepath.Join(dir, "centrifugo.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(centrifugo, "checkconfig", "-c", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("centrifugo checkconfig: %v\n%s", err, out)
	}
	var logs strings.Builder
	cmd := exec.Command(centrifugo, "-c", cfgPath)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("centrifugo log:\n%s", logs.String())
		}
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitListening(t, addr, exited)

	r := runBench(t, bench, "--server", "centrifugo", "--centrifugo-secret", secret,
		"--addr", addr, "--admin", net.JoinHostPort("127.0.0.1", strconv.Itoa(internal)), "--label", "centrifugo")
	checkDelivered(t, r, 500, 5)
	if r.Server != serverCentrifugo || r.WSShare != 1 || strings.Contains(r.Command, secret) {
		t.Fatalf("server %q, WebSocket share %v, command %q", r.Server, r.WSShare, r.Command)
	}
}

// Centrifugo's frames and messages as the session must handle them,
// without the server: its answers go over a pipe.
func TestCentrifugoSessionConsume(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	s := &centrifugoSession{conn: client, device: "dev-1"}
	push := `{"push":{"channel":"kronos:user#u","pub":{"data":{"sent":5,"device_id":"dev-2"}}}}`
	// A ping, a publish reply and a publication joined in one frame, then
	// a WebSocket ping, a refusal and a disconnect push; the last frame
	// arrives in two parts.
	var wire bytes.Buffer
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte("{}\n"+`{"id":3,"publish":{}}`+"\n"+push)))
	ws.WriteFrame(&wire, ws.NewPingFrame([]byte("p")))
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"id":4,"error":{"code":103,"message":"permission denied"}}`)))
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}`)))
	// The client's answers: the pong message, then the WebSocket pong.
	answers := make(chan ws.Frame, 2)
	go func() {
		for range 2 {
			f, err := kclient.ReadFrame(server, 1<<20)
			if err != nil {
				return
			}
			answers <- f
		}
	}()
	var got []string
	record := func(msg []byte, err error) {
		var refused *replyError
		if errors.As(err, &refused) {
			got = append(got, "refused")
		} else {
			got = append(got, string(msg))
		}
	}
	p := wire.Bytes()
	used, err := s.consume(p[:len(p)-10], record)
	if err != nil || len(got) != 2 || got[0] != push || got[1] != "refused" {
		t.Fatalf("consume: %d, %v, %q; want the publication and the refusal", used, err, got)
	}
	if f := <-answers; f.Header.OpCode != ws.OpText || string(f.Payload) != "{}" {
		t.Fatalf("answer to the ping: %v %q", f.Header.OpCode, f.Payload)
	}
	if f := <-answers; f.Header.OpCode != ws.OpPong || string(f.Payload) != "p" {
		t.Fatalf("answer to the WebSocket ping: %v %q", f.Header.OpCode, f.Payload)
	}
	if _, err := s.consume(p[used:], record); err == nil || !strings.Contains(err.Error(), "disconnected") {
		t.Fatalf("after the disconnect push: %v", err)
	}
}

func TestHS256Token(t *testing.T) {
	tok := hs256Token([]byte("k"), "user-1")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", tok)
	}
	enc := base64.RawURLEncoding
	claims, _ := enc.DecodeString(parts[1])
	if string(claims) != `{"sub":"user-1"}` {
		t.Fatalf("claims %s", claims)
	}
	mac := hmac.New(sha256.New, []byte("k"))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if sig, _ := enc.DecodeString(parts[2]); !hmac.Equal(sig, mac.Sum(nil)) {
		t.Fatal("signature is not HMAC-SHA256 of header.claims")
	}
}
