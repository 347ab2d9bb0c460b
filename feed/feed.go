// Package feed defines the storage side of a Kronos node: the Store that
// holds users' devices and tasks, and the Feed that delivers every committed
// change, in commit order per user, to the node's Sink. The write semantics
// every backend shares (Apply) and the task checks are here too.
//
// Backends live in sub-packages: bolt (the embedded file, one node),
// postgres and rethinkdb (clusters); feed/stores opens one from a URL. Every
// backend passes the suite in feed/storetest.
package feed

import (
	"context"
	"encoding/json"
	"time"
)

// Store holds the data. All methods are safe for concurrent use; each may
// block on I/O until ctx ends.
type Store interface {
	// Login resolves or creates the user and device of a login request.
	// An empty userID creates a user (version -1); an empty deviceID
	// registers a new device for the user. A login stamps its device's
	// last-seen time.
	//
	// At the device limit, registering a device retires, in the same
	// atomic step, the user's least recently seen device that is neither
	// in connected (the user's devices connected to this node) nor seen
	// within Options.DeviceIdleAfter (it may be connected to another
	// node); with no such device the login is refused (CodeTooManyDevices).
	// A retired device is unknown afterwards (CodeDeviceNotFound).
	Login(ctx context.Context, userID, deviceID string, connected ...string) (Session, error)
	// TouchDevices stamps the last-seen time of the devices, which are
	// connected to this node; unknown ids are ignored. Nodes call it
	// periodically, so that a device connected anywhere is never retired.
	TouchDevices(ctx context.Context, deviceIDs []string) error
	// ReadAll returns the user's tasks in id order and the user's version.
	// It includes every change the Feed has delivered for the user.
	ReadAll(ctx context.Context, userID string) (Snapshot, error)
	// Write applies one write atomically and returns once it is durable.
	// Its changes reach the Feed's Sink afterwards. A *Error means the
	// write was refused and changed nothing.
	Write(ctx context.Context, w *Write) error
	// Ready reports whether the store can serve requests and its feed is
	// delivering now.
	Ready(ctx context.Context) error
	// Close waits for writes in flight, delivers their changes, stops the
	// Feed and releases the store. Calls after the first return nil.
	Close() error
}

// AsyncWriter is a Store that can queue a write and report its outcome
// later, so that the caller need not hold a goroutine while it commits. A
// backend whose writes commit one by one in their own round trips gains
// nothing from it and need not implement it.
type AsyncWriter interface {
	// WriteAsync queues w, waiting at most until ctx ends for room. If it
	// returns nil, done is called exactly once, with what Write would have
	// returned, once the write is durable and before its changes reach
	// the Sink, as Write returns before they do: a writer knows how each
	// of its writes ended before their notifications come (done runs on a
	// goroutine that must not be held up: it must not block). If it
	// returns an error, w was not queued and done is never called.
	WriteAsync(ctx context.Context, w *Write, done func(error)) error
}

// Feed delivers this node's share of the committed changes: those of the
// users it watches (the embedded store, which serves one node, delivers
// every user's). Its methods are safe for concurrent use.
type Feed interface {
	// Subscribe sets the Sink. Call it once, before the first Watch or
	// Write.
	Subscribe(sink Sink)
	// Watch makes the feed deliver the user's changes whose Seq is above
	// afterSeq (a Session.Seq), each once, in Seq order; where it cannot
	// (they were pruned, or a feed broke), it delivers a ChangeResync
	// instead. It blocks until the feed covers the user, at most until ctx
	// ends, and returns why it could not. Calls are counted: the user
	// stays watched while Watch calls that returned nil outnumber Unwatch
	// calls. Changes already delivered for another watch of the user are
	// not delivered again.
	Watch(ctx context.Context, userID string, afterSeq uint64) error
	// Unwatch ends one Watch. It never blocks.
	Unwatch(userID string)
}

// Backend is an open store and this node's feed on it (one object in every
// backend). Closing the Store stops the Feed.
type Backend struct {
	Store Store
	Feed  Feed
}

// Sink receives committed changes, a batch at a time. It is called from the
// backend's feed goroutines; all changes of one user come from one goroutine
// at a time, in Seq order. It must not block for long: it holds up the feed.
// The Sink owns the batch: the backend never touches the slice, or the byte
// slices in it, again.
type Sink func(changes []Change)

// Session is the result of a successful login.
type Session struct {
	// Seq is the user's last change sequence number the login read: the
	// login's Version includes every change up to it, and none after.
	Seq       uint64
	UserID    string
	DeviceID  string
	Version   json.RawMessage
	NewUser   bool
	NewDevice bool
}

// Snapshot is a user's whole state.
type Snapshot struct {
	Tasks   []json.RawMessage // in id order, each stored verbatim
	Version json.RawMessage
	Seq     uint64 // the last change the snapshot includes
}

// ChangeKind is the kind of a task change. Only append: wire names.
type ChangeKind uint8

const (
	ChangeCreate ChangeKind = iota + 1
	ChangeUpdate
	ChangeDelete
	// ChangeResync says the feed lost changes of the user (its log was
	// pruned past them, or a changefeed broke): the user's devices must
	// log in again and re-sync. Only UserID is set.
	ChangeResync
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeCreate:
		return "create"
	case ChangeUpdate:
		return "update"
	case ChangeDelete:
		return "delete"
	case ChangeResync:
		return "resync"
	}
	return "unknown"
}

// Change is one committed change to one task.
type Change struct {
	// Seq numbers the user's changes in commit order: 1, 2, 3… with no
	// gaps, in every backend. A write's changes take consecutive numbers.
	Seq      uint64
	UserID   string
	Kind     ChangeKind
	TaskID   int64
	Task     json.RawMessage // the task as stored after the change; nil for a delete
	DeviceID string          // the device whose write made the change
	Version  json.RawMessage // the user's version after the write
}

// WriteKind names a write request.
type WriteKind uint8

const (
	WriteAll WriteKind = iota + 1
	WriteCreate
	WriteUpdate
	WriteDelete
)

func (k WriteKind) String() string {
	switch k {
	case WriteAll:
		return "write-all"
	case WriteCreate:
		return "create"
	case WriteUpdate:
		return "update"
	case WriteDelete:
		return "delete"
	}
	return "unknown"
}

// Write is one validated write request of a logged-in device.
type Write struct {
	Kind     WriteKind
	UserID   string
	DeviceID string
	// Version is stored as the user's version, verbatim; nil keeps it.
	Version json.RawMessage
	// Tasks is the new whole set (WriteAll); ids are unique.
	Tasks []Task
	// Task is the task to create (WriteCreate) or the fields to merge into
	// the stored task (WriteUpdate).
	Task json.RawMessage
	// TaskID names the task to update or delete.
	TaskID int64
	// TaskIndex, when not empty, names the task to delete by its stored
	// "index" field instead of TaskID (older clients).
	TaskIndex string

	// Seq is set by the store when the write succeeds (before Write
	// returns, or before WriteAsync's done runs): the Seq of its last
	// change, 0 when it changed no task. The node holds the writing
	// device's next answers until that change's notification has gone to
	// it, so that answers and its own notifications keep request order.
	Seq uint64
}

// SeenStale reports whether a device last seen at seen should be stamped
// again at now: stamps finer than a thirtieth of the idle window (a minute
// by default) change no decision, and skipping them spares the store a
// write on most logins and writes.
func SeenStale(seen, now time.Time, idle time.Duration) bool {
	return seen.Before(StampBefore(now, idle))
}

// StampBefore is the time before which a last-seen time is due a stamp.
func StampBefore(now time.Time, idle time.Duration) time.Time {
	return now.Add(-idle / 30)
}

// Task is a validated task: its id and its JSON object, compact.
type Task struct {
	ID  int64
	Raw json.RawMessage
}
