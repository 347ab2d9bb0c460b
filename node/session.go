package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
)

// session is the protocol state of one connection.
//
// The read side (login, requests) runs on one worker at a time, so its
// fields need no lock. userID and deviceID are written before the session
// is published (hub.add, active), and read by others only after that.
// mu orders notifications against the login and read-all answers and the
// answers of writes (lock order: session.mu before the Conn's own lock, see
// LOCKS.md).
type session struct {
	// Ordered by size, so that padding does not push a session into a
	// larger allocation class (TestSessionFitsItsSizeClass).
	node    *Node
	conn    *conn.Conn
	limiter rateLimiter

	userID   string
	deviceID string
	loginAt  int64 // unix nanos; orders logins of one device across nodes

	mu      sync.Mutex
	backlog []pending // under mu: notifications that arrived while pending
	lastSeq uint64    // under mu: the last change this device has (login or notification)
	// inflight: under mu: the oldest of the answers waiting their turn
	// (writes queued on an AsyncWriter or waiting for their notification,
	// a read-all waiting for notifications), linked oldest first (see
	// writeAsync, answerInPlace).
	inflight *asyncWrite

	active   atomic.Bool // logged in: deviceID is final
	loggedIn bool
	inHub    bool // in the hub: receives the user's notifications
	watching bool // a Watch of the feed succeeded for this session
	pending  bool // under mu: a login or read-all in flight: notifications wait in backlog
}

type pending struct {
	seq     uint64
	payload []byte
}

func userKey(userID string) string {
	sum := sha256.Sum256([]byte(userID))
	return hex.EncodeToString(sum[:6])
}

func (s *session) logger(level zerolog.Level) *zerolog.Event {
	return s.loggerOn(&s.node.log, level)
}

func (s *session) loggerOn(l *zerolog.Logger, level zerolog.Level) *zerolog.Event {
	ev := l.WithLevel(level)
	if !ev.Enabled() {
		return ev
	}
	ev = ev.Uint64("conn", s.conn.ID()).Str("transport", s.conn.Transport().String())
	if s.loggedIn {
		ev = ev.Str("user", userKey(s.userID)) // user ids are secrets: a short hash
	}
	return ev
}

// send queues a message for this connection.
func (s *session) send(payload []byte) { s.conn.Send(payload) }

func (s *session) sendError(reqType, msg string) {
	s.send(encodeError(reqType, msg))
}

// deliver sends one notification unless the device already has it.
// It is only queued in b: the caller flushes b.
func (s *session) deliver(seq uint64, payload []byte, b *conn.Batch) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending {
		s.backlog = append(s.backlog, pending{seq, payload})
		return false
	}
	return s.sendNewLocked(seq, payload, b)
}

// sendNewLocked sends a notification newer than what the device has:
// every backend numbers a user's changes, so one seen twice (a feed that
// overlaps itself) or already in the login's answer is dropped here. s.mu
// must be held. With a batch, it is only queued there.
func (s *session) sendNewLocked(seq uint64, payload []byte, b *conn.Batch) bool {
	if seq <= s.lastSeq {
		return false
	}
	s.lastSeq = seq
	var sent bool
	if b == nil {
		sent = s.conn.Send(payload)
	} else {
		sent = s.conn.SendBatched(payload, b)
	}
	if s.inflight != nil {
		s.answerLocked() // answers that waited for this device's own change
	}
	return sent
}

// answer sends the login answer, which reflects the store up to seq, then
// the notifications that waited for it (see hold), in order. Changes
// committed before the login's read are in the answer's version and are
// not sent again.
func (s *session) answer(seq uint64, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastSeq = max(s.lastSeq, seq)
	s.conn.Send(payload)
	s.sendHeldLocked(s.backlog)
	s.pending, s.backlog = false, nil
}

// sendHeldLocked sends notifications that waited during a hold, but those
// the device has already. s.mu must be held.
func (s *session) sendHeldLocked(held []pending) {
	sent := 0
	for _, p := range held {
		if s.sendNewLocked(p.seq, p.payload, nil) {
			sent++
		}
	}
	s.node.metrics.notifications.Add(float64(sent))
}

// answerInPlace sends a read-all's answer, which includes every change up
// to seq, in its place among the device's notifications: after those of
// the changes it includes and before the later ones, so that a client that
// replaces its tasks with it neither applies a change twice nor loses one.
// Every notification still goes out. Those that waited during the read
// (see hold) and are in the answer go first. If some it includes are still
// on their way through the feed, the answer waits first in line for them,
// as a write's answer waits for its notification (answerLocked), at most
// StoreTimeout; the feed's Seq order puts the later ones behind it. send
// queues the answer; it runs under s.mu.
func (s *session) answerInPlace(seq uint64, send func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	backlog := s.backlog
	s.pending, s.backlog = false, nil
	included := 0
	for included < len(backlog) && backlog[included].seq <= seq {
		included++
	}
	s.sendHeldLocked(backlog[:included])
	if seq <= s.lastSeq || included < len(backlog) || s.conn.Closing() {
		// The device has all the answer includes (or, past it, a feed that
		// skipped: nothing left to wait for).
		send()
		s.sendHeldLocked(backlog[included:])
		return
	}
	held := &asyncWrite{s: s, done: true, seq: seq, counted: true, send: send}
	s.appendInflightLocked(held)
	held.timer = time.AfterFunc(s.node.opts.StoreTimeout, held.timedOut)
}

// hold makes the notifications that reach the session wait in its backlog,
// until answer or answerInPlace: the store is about to read, and a change that commits
// between its read and the answer is neither lost nor sent before the
// answer.
func (s *session) hold() {
	s.mu.Lock()
	s.pending = true
	s.mu.Unlock()
}

// join puts the session in the hub, so that it receives the user's
// notifications, held back until the login's answer.
func (s *session) join() {
	s.hold()
	s.node.hub.add(s)
	s.inHub = true
}

// watch makes the feed cover the user from the login's read on.
func (s *session) watch(ctx context.Context, afterSeq uint64) error {
	if err := s.node.feed.Watch(ctx, s.userID, afterSeq); err != nil {
		return err
	}
	s.watching = true
	return nil
}

func (s *session) unregister() {
	if s.watching {
		s.watching = false
		s.node.feed.Unwatch(s.userID)
	}
	if s.inHub {
		s.inHub = false
		s.node.hub.remove(s)
	}
}

func (s *session) login(ctx context.Context, req *request) {
	if s.loggedIn {
		s.sendError(typeLogin, "already logged in")
		return
	}
	userID, err := optionalString(req.UserID, "user_id")
	if err == nil {
		s.deviceID, err = optionalString(req.DeviceID, "device_id")
	}
	if err != nil {
		s.sendError(typeLogin, err.Error())
		return
	}
	if userID == "" && !s.node.signups.allow(s.conn.RemoteAddr().Addr(), time.Now()) {
		s.node.metrics.logins.WithLabelValues("refused").Inc()
		s.sendError(typeLogin, fmt.Sprintf("too many new users from this address: at most %d per minute", s.node.opts.NewUsersPerMinute))
		return
	}
	// An existing user may get changes from other devices while the store
	// reads the login: join the hub first. A new user has none yet.
	if userID != "" {
		s.userID = userID
		s.join()
	}
	// A new device of a user at the limit retires an idle one, never one
	// connected here, however long since the store last saw it.
	var connected []string
	if userID != "" && s.deviceID == "" {
		connected = s.node.hub.userDevices(userID, nil)
	}
	sess, err := s.node.store.Login(ctx, userID, s.deviceID, connected...)
	if err == nil {
		s.userID, s.deviceID = sess.UserID, sess.DeviceID
		if !s.inHub {
			s.join()
		}
		err = s.watch(ctx, sess.Seq)
	}
	if err != nil {
		s.unregister()
		s.userID, s.deviceID = "", ""
		s.mu.Lock()
		s.pending, s.backlog = false, nil
		s.mu.Unlock()
		s.node.metrics.logins.WithLabelValues(loginOutcome(err)).Inc()
		s.storeError(typeLogin, err)
		return
	}
	s.loggedIn = true
	s.conn.SetIdentified()
	s.loginAt = time.Now().UnixNano()
	s.active.Store(true)
	s.node.takeOver(s)
	s.answer(sess.Seq, encodeLogin(sess))
	outcome := "existing"
	if sess.NewUser {
		outcome = "new_user"
	} else if sess.NewDevice {
		outcome = "new_device"
	}
	s.node.metrics.logins.WithLabelValues(outcome).Inc()
	s.logger(zerolog.DebugLevel).Str("outcome", outcome).Msg("login")
}

func loginOutcome(err error) string {
	var fe *feed.Error
	if errors.As(err, &fe) {
		return "refused"
	}
	return "error"
}

func (s *session) readAll() {
	// The answer is placed among the device's notifications by the Seq it
	// was read at (answerInPlace): while the store reads, they wait.
	s.hold()
	f := s.node.reads.readAll(s.node, s.userID)
	switch {
	case f.err != nil:
		s.answerInPlace(0, func() { s.storeError(typeReadAll, f.err) })
	case f.shared != nil:
		s.answerInPlace(f.seq, func() { s.conn.SendShared(f.shared) })
	default:
		s.answerInPlace(f.seq, func() { s.conn.Send(f.payload) })
	}
}

// prepareWrite builds the store's write for a request.
func (s *session) prepareWrite(typ string, req *request) (*feed.Write, error) {
	w, err := buildWrite(typ, req, s.node.opts.Limits)
	if err != nil {
		return nil, err
	}
	w.UserID, w.DeviceID = s.userID, s.deviceID
	return w, nil
}

func (s *session) write(ctx context.Context, typ string, w *feed.Write) bool {
	if err := s.node.store.Write(ctx, w); err != nil {
		s.awaitWrites(0) // after the notifications of the writes before it
		s.storeError(typ, err)
		return false
	}
	// The change reaches every device, this one too, as notifications
	// from the feed; this device's next answers wait for it.
	s.awaitNotification(w.Seq)
	return true
}

// awaitNotification holds the session's next answers until the
// notification of its change seq has gone to this device: a write's only
// answer is that notification, and a later answer (a refusal, a read-all)
// must not overtake it. A blocking write's request is counted already.
func (s *session) awaitNotification(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq <= s.lastSeq || s.conn.Closing() {
		return
	}
	aw := &asyncWrite{s: s, done: true, seq: seq, counted: true}
	s.appendInflightLocked(aw)
	aw.timer = time.AfterFunc(s.node.opts.StoreTimeout, aw.timedOut)
}

// appendInflightLocked links aw behind the session's writes in flight.
// s.mu must be held.
func (s *session) appendInflightLocked(aw *asyncWrite) {
	link := &s.inflight
	for *link != nil {
		link = &(*link).next
	}
	*link = aw
}

// maxPipelinedWrites bounds a session's writes in flight on an
// AsyncWriter. A device that sends writes faster than they commit (a
// backlog after a stall, a client that batches) has them queued together,
// so that they join the same commit instead of holding a read worker each
// while the one before commits (docs/benchmarks.md, "Pipelined writes").
const maxPipelinedWrites = 16

// maxPipelinedWriteBytes: a larger write (a big write-all) is not
// pipelined; it holds its read worker until it is answered, as every write
// did before pipelining, so that the pool's workers bound how many such
// writes the node holds at once. Kronos tasks are small; up to this size
// the commit queue bounds the memory of writes waiting (1,024 of them).
const maxPipelinedWriteBytes = 16 << 10

// writeBytes is about what a write holds in memory until it commits.
func writeBytes(w *feed.Write) int {
	n := len(w.Task) + len(w.Version)
	for _, t := range w.Tasks {
		n += len(t.Raw)
	}
	return n
}

// writeAsync queues a write on a store that commits asynchronously (see
// feed.AsyncWriter) and returns without waiting for it: the worker goes back
// to the pool, and the committer answers (a failure with an error; a
// success with the notification of its change, which this device gets as
// every other device does) and records the request. The store commits a
// session's writes in the order they were queued; their answers go out in
// that order too (finishWrite, answerLocked), and any other answer waits
// for them (awaitWrites).
func (s *session) writeAsync(ctx context.Context, typ string, w *feed.Write, start time.Time) {
	aw := &asyncWrite{s: s, w: w, typ: typ, start: start}
	s.node.writes.Add(1)
	s.mu.Lock()
	s.appendInflightLocked(aw)
	// Set under mu: timedOut, which takes mu, may run before this returns.
	aw.timer = time.AfterFunc(s.node.opts.StoreTimeout, aw.timedOut)
	s.mu.Unlock()
	if err := s.node.async.WriteAsync(ctx, w, aw.committed); err != nil {
		aw.committed(err)
	}
}

// awaitWrites waits until at most limit of the session's writes are in
// flight. Only the read side calls it: with limit 0 before any answer of
// its own, so that answers keep the order of their requests.
func (s *session) awaitWrites(limit int) {
	for {
		s.mu.Lock()
		n := 0
		for aw := s.inflight; aw != nil; aw = aw.next {
			n++
		}
		if n <= limit {
			s.mu.Unlock()
			return
		}
		// Writes are answered oldest first: once this one is, at most
		// limit are left.
		aw := s.inflight
		for range n - limit - 1 {
			aw = aw.next
		}
		if aw.answered == nil {
			aw.answered = make(chan struct{})
		}
		answered := aw.answered
		s.mu.Unlock()
		<-answered
	}
}

// refuse answers a request with an error, after the answers of the
// session's writes in flight.
func (s *session) refuse(typ, msg string) {
	s.awaitWrites(0)
	s.sendError(typ, msg)
}

// asyncWrite is a write in flight on an AsyncWriter, or a committed write
// whose notification has not reached its device yet (or, with send, a
// read-all's answer waiting for the notifications of the changes it
// includes: done, with seq the last of them). Its outcome is known
// when it commits or when StoreTimeout passes, whichever comes first (as
// with a blocking write, one that times out may still commit and be
// notified); timer.Stop decides which. Once committed, the same timer
// bounds the wait for its notification.
type asyncWrite struct {
	s     *session
	w     *feed.Write // until it commits, which sets w.Seq
	typ   string
	start time.Time
	timer *time.Timer

	// Under s.mu.
	next *asyncWrite // the session's next write in flight
	err  error       // its outcome, once done
	done bool        // committed or timed out; answered when it is the oldest
	// seq: committed, and the notification of its change seq has not gone
	// to this device yet; 0 once it has (or it changed nothing).
	seq      uint64
	counted  bool          // its request was counted already (a blocking write)
	send     func()        // not a write: a read-all's answer, sent when its turn comes
	answered chan struct{} // made by a waiting reader, closed once answered
}

func (aw *asyncWrite) committed(err error) {
	if aw.timer.Stop() {
		aw.s.finishWrite(aw, err, aw.w.Seq)
	}
	aw.w = nil
	aw.s.node.writes.Done()
}

func (aw *asyncWrite) timedOut() {
	s := aw.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if aw.done {
		// Committed (or read), but its notification did not reach this
		// device in StoreTimeout (a feed far behind): what follows goes
		// out anyway.
		aw.seq = 0
	} else {
		aw.done, aw.err = true, context.DeadlineExceeded
	}
	s.answerLocked()
}

// finishWrite records a write's outcome: a committed write waits for the
// notification of its change seq (StoreTimeout at most), which is its
// answer. The committer reports a session's writes in order; a timeout
// can come early, and then waits for the answers of the writes before it.
func (s *session) finishWrite(aw *asyncWrite, err error, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	aw.done, aw.err = true, err
	if err == nil && seq > s.lastSeq && !s.conn.Closing() {
		aw.seq = seq
		aw.timer.Reset(s.node.opts.StoreTimeout)
	}
	s.answerLocked()
}

// answerLocked answers, oldest first, every write whose outcome is known,
// whose notification has gone to this device, and which has none older
// still pending. s.mu must be held.
func (s *session) answerLocked() {
	for head := s.inflight; head != nil && head.done && head.seq <= s.lastSeq; head = s.inflight {
		s.inflight = head.next
		head.timer.Stop()
		if !head.counted {
			outcome := "ok"
			if head.err != nil {
				s.storeError(head.typ, head.err)
				outcome = "refused"
			}
			s.node.observeRequest(head.typ, outcome, head.start)
		}
		if head.send != nil {
			head.send()
		}
		if head.answered != nil {
			close(head.answered)
		}
	}
}

// storeError answers a failed store call: a refusal with its own message;
// a store that did not answer in time, or failed (down, disk full, read
// only), with a message that says to try again. The details go to the log,
// never to the client.
func (s *session) storeError(typ string, err error) {
	var fe *feed.Error
	switch {
	case errors.As(err, &fe):
		s.sendError(typ, fe.Msg)
	case errors.Is(err, context.DeadlineExceeded):
		s.logger(zerolog.WarnLevel).Str("type", typ).Msg("store timed out")
		s.sendError(typ, "store timed out, try again")
	default:
		s.logger(zerolog.ErrorLevel).Err(err).Str("type", typ).Msg("store failed")
		s.sendError(typ, "storage unavailable, try again")
	}
}

// checkIdentity refuses a request whose user_id or device_id is not the
// connection's: the logged-in identity is the only authority.
func (s *session) checkIdentity(req *request) error {
	userID, err := optionalString(req.UserID, "user_id")
	if err != nil {
		return err
	}
	deviceID, err := optionalString(req.DeviceID, "device_id")
	if err != nil {
		return err
	}
	if userID != "" && userID != s.userID {
		return badRequest("user_id does not match the logged-in user")
	}
	if deviceID != "" && deviceID != s.deviceID {
		return badRequest("device_id does not match the logged-in device")
	}
	return nil
}

// storeContext bounds one store call.
func (s *session) storeContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.node.opts.StoreTimeout)
}

func (s *session) allow(now time.Time) bool {
	return s.limiter.allow(now, s.node.opts.RateLimit, float64(s.node.opts.RateBurst))
}
