package feed

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
)

// Dumper reads a backend's data one whole user at a time, for moving it to
// another backend (kronos migrate). Its methods are safe for concurrent use
// with each other and with the Store's; each reads a settled state of every
// user it returns (never half a write), but a call sees the writes that
// committed before it, so a dump taken while writers run is not one
// snapshot of the whole store.
type Dumper interface {
	// DumpUsers returns at most limit users whose ids come after after in
	// the backend's own stable order ("" starts at the first), with all
	// their data. Fewer than limit means the end.
	DumpUsers(ctx context.Context, after string, limit int) ([]UserData, error)
	// LookupUsers returns those of ids that exist, in any order.
	LookupUsers(ctx context.Context, ids []string) ([]UserData, error)
	// Count counts what is stored, from the stored items themselves rather
	// than from the per-user counters.
	Count(ctx context.Context) (Counts, error)
}

// Loader writes whole users into a backend, for kronos migrate.
type Loader interface {
	// LoadUsers makes the backend's copy of each user hold exactly the
	// user's tasks and version, byte for byte, and at least its devices (a
	// device is never removed: it may be logged in). No limit or stale
	// version check applies: the data was checked when first written.
	//
	// Each user is loaded whole or not at all, and loading the same data
	// again changes nothing, so an interrupted load is completed by running
	// it again. A user new to the backend starts at change number 0, like
	// a user whose changes were all pruned; for a user the backend already
	// had, the difference is one write through the backend's write path:
	// its changes are logged and numbered, and watching nodes notify them
	// to the user's devices (as from a device with an empty id).
	//
	// A device id the backend gives to another user fails the load with an
	// ErrDeviceTaken refusal.
	LoadUsers(ctx context.Context, users []UserData) error
}

// UserData is one user's whole stored state.
type UserData struct {
	ID      string
	Version json.RawMessage // verbatim
	Devices []string        // sorted
	Tasks   []Task          // in id order, each verbatim
}

// Equal reports whether u and v hold the same data, byte for byte.
func (u *UserData) Equal(v *UserData) bool {
	return u.ID == v.ID && bytes.Equal(u.Version, v.Version) && slices.Equal(u.Devices, v.Devices) &&
		slices.EqualFunc(u.Tasks, v.Tasks, func(a, b Task) bool { return a.ID == b.ID && bytes.Equal(a.Raw, b.Raw) })
}

// Counts are the items a store holds.
type Counts struct {
	Users, Devices, Tasks int64
}

// Add returns the sum of c and d.
func (c Counts) Add(d Counts) Counts {
	return Counts{c.Users + d.Users, c.Devices + d.Devices, c.Tasks + d.Tasks}
}

// Replace makes tx hold exactly tasks (unique ids, any order; kept
// verbatim) and version, with none of Apply's checks: it moves data that was
// checked when it was first written. It returns the changes a write-all
// would notify, from deviceID, without Seq.
func Replace(tx UserTx, userID, deviceID string, tasks []Task, version json.RawMessage) ([]Change, error) {
	change := func(kind ChangeKind, id int64, task json.RawMessage) Change {
		return Change{UserID: userID, Kind: kind, TaskID: id, Task: task, DeviceID: deviceID, Version: version}
	}
	old, err := tx.All()
	if err != nil {
		return nil, err
	}
	changes, err := diff(old, tasks, change)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		if c.Kind == ChangeDelete {
			err = tx.Delete(c.TaskID)
		} else {
			err = tx.Put(c.TaskID, c.Task)
		}
		if err != nil {
			return nil, err
		}
	}
	if !bytes.Equal(version, tx.Version()) {
		if err := tx.SetVersion(version); err != nil {
			return nil, err
		}
	}
	return changes, nil
}
