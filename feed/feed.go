// Package feed holds users' tasks and emits the change feed: every committed
// write becomes per-task changes delivered, in commit order per user, to the
// node's Sink. Backends: the embedded bbolt file (one node), PostgreSQL and
// RethinkDB (clusters). Every backend passes the suite in feed/storetest.
package feed

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Store is a backend. All methods are safe for concurrent use.
type Store interface {
	// Login resolves or creates the user and device of a login request.
	// An empty userID creates a user (version -1); an empty deviceID
	// registers a new device for the user.
	Login(ctx context.Context, userID, deviceID string) (Session, error)
	// ReadAll returns the user's tasks in id order and the user's version.
	ReadAll(ctx context.Context, userID string) (Snapshot, error)
	// Write applies one write atomically and returns once it is durable.
	// Its changes reach the Sink afterwards, in commit order per user.
	Write(ctx context.Context, w *Write) error
	// Subscribe sets the Sink. Call it once, before the first write.
	Subscribe(sink Sink)
	// Watch and Unwatch tell the feed which users have devices connected to
	// this node; a shared backend delivers changes of watched users only.
	// Calls are counted: a user is watched while Watch calls outnumber
	// Unwatch calls.
	Watch(userID string)
	Unwatch(userID string)
	// Ready reports whether the store can serve requests now.
	Ready(ctx context.Context) error
	// Close waits for writes in flight, delivers their changes and closes.
	Close() error
}

// Sink receives committed changes, a batch at a time. It is called from
// several goroutines at once, but all changes of one user come from the same
// goroutine, in commit order. It must not block for long: it holds up the
// feed. changes is valid only until Sink returns.
type Sink func(changes []Change)

// Session is the result of a successful login.
type Session struct {
	// Seq is the user's commit sequence the login read (see Change.Seq).
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
	// Seq grows with commit order, at least per user; 0 when the backend
	// cannot tell. Changes of one write may share a Seq.
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
}

// Task is a validated task: its id and its JSON object, compact.
type Task struct {
	ID  int64
	Raw json.RawMessage
}

// Limits bound what one user may store.
type Limits struct {
	MaxTasksPerUser   int // default 10000
	MaxDevicesPerUser int // default 50
	MaxTaskBytes      int // one task, compact JSON; default 64 KiB
}

// SetDefaults fills zero fields with their defaults.
func (l *Limits) SetDefaults() {
	if l.MaxTasksPerUser <= 0 {
		l.MaxTasksPerUser = 10000
	}
	if l.MaxDevicesPerUser <= 0 {
		l.MaxDevicesPerUser = 50
	}
	if l.MaxTaskBytes <= 0 {
		l.MaxTaskBytes = 64 << 10
	}
}

// Options configure a backend.
type Options struct {
	Limits Limits
	// ChangeLogRetention is how long a shared backend keeps its change
	// log (a node whose feed is down longer re-syncs its devices).
	// Default 24h.
	ChangeLogRetention time.Duration
	// ChangeLogMaxRows caps the change log. Default 1,000,000.
	ChangeLogMaxRows int
	// PruneInterval is how often the change log is pruned. Default 1m.
	PruneInterval time.Duration

	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

func (o *Options) setFeedDefaults() {
	if o.ChangeLogRetention <= 0 {
		o.ChangeLogRetention = 24 * time.Hour
	}
	if o.ChangeLogMaxRows <= 0 {
		o.ChangeLogMaxRows = 1_000_000
	}
	if o.PruneInterval <= 0 {
		o.PruneInterval = time.Minute
	}
}

// Open opens the backend named by a store URL: "bolt:PATH" (the default
// embedded file), "postgres://…" (a libpq URL) or "rethinkdb://…".
func Open(ctx context.Context, url string, opts Options) (Store, error) {
	opts.Limits.SetDefaults()
	scheme, rest, _ := strings.Cut(url, ":")
	switch scheme {
	case "bolt":
		return OpenBolt(strings.TrimPrefix(rest, "//"), opts)
	case "postgres", "postgresql":
		return OpenPostgres(ctx, url, opts)
	case "rethinkdb":
		return OpenRethink(ctx, url, opts)
	}
	return nil, fmt.Errorf("store %q: unknown scheme %q (want bolt:PATH, postgres://… or rethinkdb://…)", redactURL(url), scheme)
}

// redactURL hides a password in a store URL for error messages and logs.
func redactURL(url string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return url
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + "://" + user + ":xxxxx@" + rest[at+1:]
}
