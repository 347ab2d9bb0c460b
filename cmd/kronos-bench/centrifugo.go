package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/kronos-sync/kronos-server/node/client"
)

// centrifugoTarget drives Centrifugo (v6) through its bidirectional JSON
// protocol over WebSocket, the way a Kronos client would use it in place
// of Kronos: each device connects with a token naming its user, subscribes
// to the user-limited channel of its user, and a write is a client-side
// publication of the notification Kronos would have sent, to that channel.
// Centrifugo's memory engine keeps nothing: unlike Kronos, no write is
// stored before it is delivered.
//
// The server must have a namespace named by centrifugoNamespace with
// allow_user_limited_channels and allow_publish_for_subscriber, and verify
// connection tokens with client.token.hmac_secret_key: centrifugoConfig
// is such a configuration.
type centrifugoTarget struct {
	addr    string
	secret  []byte // HMAC-SHA256 key of the connection tokens
	timeout time.Duration
}

const (
	centrifugoNamespace = "kronos"
	centrifugoPath      = "/connection/websocket"
)

// Wire fragments of the JSON protocol (github.com/centrifugal/protocol).
var (
	cfPing     = []byte("{}") // a server ping, and the client's pong
	cfPush     = []byte(`{"push":`)
	cfPub      = []byte(`"pub":`)
	cfDisc     = []byte(`"disconnect":`)
	cfError    = []byte(`"error":`)
	cfNewline  = []byte("\n")
	cfIDPrefix = []byte(`{"id":`)
)

// cfMaxFrame bounds a frame from Centrifugo.
const cfMaxFrame = 64 << 20

// centrifugoSession is one device's connection. Pongs are written by the
// reading goroutine and publications by the writing one: wmu keeps their
// frames whole.
type centrifugoSession struct {
	conn    net.Conn
	frames  *client.FrameReader // reader only
	channel string
	device  string
	nextID  atomic.Uint32 // command IDs: 1 and 2 are the login's

	wmu sync.Mutex

	pending []byte // the rest of a frame holding several messages (reader only)
}

// connect dials, then sends the connect and subscribe commands in one
// frame, as the JSON protocol allows, so that logging in costs one round
// trip as with Kronos; it returns once both are answered. A user's ID and
// a device's ID are random UUIDs, the same length as Kronos's, so that the
// channel names and the published notifications have Kronos's sizes.
func (t centrifugoTarget) connect(ctx context.Context, d *benchDevice, local *net.TCPAddr) (session, error) {
	if d.user.id == "" {
		d.user.id = randomUUID()
	}
	if d.deviceID == "" {
		d.deviceID = randomUUID()
	}
	wd := ws.Dialer{NetDial: dialer(local).DialContext}
	conn, br, _, err := wd.Dial(ctx, "ws://"+t.addr+centrifugoPath)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	s := &centrifugoSession{
		conn: conn, frames: client.NewFrameReader(br, cfMaxFrame), device: d.deviceID,
		channel: centrifugoNamespace + ":user#" + d.user.id,
	}
	s.nextID.Store(2)
	// %q quotes as JSON does for what it quotes here: UUIDs, base64url
	// and names, all plain ASCII.
	login := fmt.Appendf(nil, `{"id":1,"connect":{"token":%q,"name":"kronos-bench"}}`+"\n"+`{"id":2,"subscribe":{"channel":%q}}`,
		hs256Token(t.secret, d.user.id), s.channel)
	if err := s.send(login); err != nil {
		conn.Close()
		return nil, err
	}
	if err := s.awaitLogin(t.timeout); err != nil {
		conn.Close()
		return nil, fmt.Errorf("centrifugo login: %w", err)
	}
	return s, nil
}

// awaitLogin reads the answers to the connect (1) and subscribe (2)
// commands; the first error answer is the error.
func (s *centrifugoSession) awaitLogin(timeout time.Duration) error {
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer s.conn.SetReadDeadline(time.Time{})
	for answered := 0; answered < 2; {
		msg, err := s.message()
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(msg, cfIDPrefix) {
			continue // a push before the answers: none is expected
		}
		if bytes.Contains(msg, cfError) {
			return errors.New(string(msg))
		}
		answered++
	}
	return nil
}

// write publishes the notification Kronos would send for the same update,
// byte for byte in its form, to every device of the user, the writer
// included (it is subscribed too). Centrifugo also answers the writer
// with a publish reply, which next skips.
func (s *centrifugoSession) write(sent, version int64) error {
	id := s.nextID.Add(1)
	// %q is JSON's quoting for these ASCII values, as in connect.
	cmd := fmt.Appendf(nil, `{"id":%d,"publish":{"channel":%q,"data":{"success":true,"type":"update","task":{"id":1,"desc":"bench","sent":%d},"device_id":%q,"version":%d}}}`,
		id, s.channel, sent, s.device, version)
	return s.send(cmd)
}

// handoff gives got the messages left from the login's last frame.
func (s *centrifugoSession) handoff(got func([]byte, error)) (net.Conn, []byte, error) {
	for len(s.pending) > 0 {
		var msg []byte
		msg, s.pending, _ = bytes.Cut(s.pending, cfNewline)
		if err := s.handle(msg, got); err != nil {
			return nil, nil, err
		}
	}
	return s.conn, s.frames.Buffered(), nil
}

// consume handles the whole frames at the start of p. Centrifugo may join
// several messages in one frame, one per line, and writes each frame
// whole; a fragment is read as the lines it holds, which is right while no
// message spans two fragments.
func (s *centrifugoSession) consume(p []byte, got func([]byte, error)) (int, error) {
	used := 0
	for {
		h, payload, n, err := client.CutFrame(p[used:], cfMaxFrame)
		if n == 0 || err != nil {
			return used, err
		}
		used += n
		switch h.OpCode {
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			for len(payload) > 0 {
				var msg []byte
				msg, payload, _ = bytes.Cut(payload, cfNewline)
				if err := s.handle(msg, got); err != nil {
					return used, err
				}
			}
		default:
			if err := s.control(h.OpCode, payload); err != nil {
				return used, err
			}
		}
	}
}

// control answers a ping; a close frame ends the connection.
func (s *centrifugoSession) control(op ws.OpCode, payload []byte) error {
	switch op {
	case ws.OpPing:
		return s.sendFrame(ws.NewPongFrame(payload))
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(payload)
		return fmt.Errorf("centrifugo closed the WebSocket: %d %s: %w", code, reason, io.EOF)
	}
	return nil
}

// handle passes on a publication pushed to this device (the whole push
// message, whose data holds the writer's send time and device ID). It
// answers pings, skips replies to this device's publishes, and turns an
// error reply into a *replyError and a disconnect push into an error.
func (s *centrifugoSession) handle(msg []byte, got func([]byte, error)) error {
	switch {
	case bytes.Equal(msg, cfPing):
		return s.send(cfPing)
	case bytes.HasPrefix(msg, cfPush) && bytes.Contains(msg, cfPub):
		got(msg, nil)
	case bytes.HasPrefix(msg, cfPush) && bytes.Contains(msg, cfDisc):
		return fmt.Errorf("centrifugo disconnected the client: %s", msg)
	case bytes.HasPrefix(msg, cfIDPrefix) && bytes.Contains(msg, cfError):
		got(nil, &replyError{string(msg)})
	}
	return nil
}

// message returns the next JSON message. Centrifugo may join several in
// one frame, one per line.
func (s *centrifugoSession) message() ([]byte, error) {
	for len(s.pending) == 0 {
		h, payload, err := s.frames.Next() // the login's: the poller reads after it
		if err != nil {
			return nil, err
		}
		switch h.OpCode {
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			// Centrifugo writes each frame whole; a fragment is read as
			// the lines it holds, which is right while no message spans
			// two fragments.
			s.pending = payload
		default:
			if err := s.control(h.OpCode, payload); err != nil {
				return nil, err
			}
		}
	}
	msg, rest, _ := bytes.Cut(s.pending, cfNewline)
	s.pending = rest
	return msg, nil
}

// send writes p as one text message.
func (s *centrifugoSession) send(p []byte) error { return s.sendFrame(ws.NewTextFrame(p)) }

// sendFrame masks f, as a client must, and writes it in one call under
// wmu. MaskFrame copies the payload, so p stays the caller's.
func (s *centrifugoSession) sendFrame(f ws.Frame) error {
	b, err := ws.CompileFrame(ws.MaskFrame(f))
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err = s.conn.Write(b)
	return err
}

func (s *centrifugoSession) close() error { return s.conn.Close() }

func (s *centrifugoSession) useConn(c net.Conn) {
	s.wmu.Lock()
	s.conn = c
	s.wmu.Unlock()
}

// hs256Token is a JWT for Centrifugo's connect command: HS256, with the
// user ID as sub and no expiry (a run is short and the secret is its own).
func hs256Token(secret []byte, user string) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims := enc.EncodeToString([]byte(`{"sub":` + strconv.Quote(user) + `}`))
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(header + "." + claims))
	return header + "." + claims + "." + enc.EncodeToString(mac.Sum(nil))
}

// randomUUID is a random (version 4) UUID string.
func randomUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
