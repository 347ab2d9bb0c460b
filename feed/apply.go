package feed

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
)

// UserTx is one user's data inside a backend transaction. Apply runs the
// protocol's write semantics on it, so every backend shares them.
type UserTx interface {
	Version() json.RawMessage
	TaskCount() int
	Get(id int64) (json.RawMessage, bool, error)
	All() ([]Task, error) // in id order
	Put(id int64, raw json.RawMessage) error
	Delete(id int64) error
	SetVersion(v json.RawMessage) error
}

// Apply performs w on tx and returns its changes, without Seq (the backend
// numbers them as it commits). Every check happens before the first
// mutation, so a refused write changes nothing even where a backend cannot
// roll back; a refusal is an *Error.
func Apply(tx UserTx, w *Write, limits Limits) ([]Change, error) {
	version := w.Version
	if version == nil {
		version = tx.Version()
	}
	change := func(kind ChangeKind, id int64, task json.RawMessage) Change {
		return Change{UserID: w.UserID, Kind: kind, TaskID: id, Task: task, DeviceID: w.DeviceID, Version: version}
	}
	var changes []Change
	switch w.Kind {
	case WriteAll:
		if w.Version != nil && versionOlder(w.Version, tx.Version()) {
			return nil, errStaleVersion(w.Version, tx.Version())
		}
		if len(w.Tasks) > limits.MaxTasksPerUser {
			return nil, errTooManyTasks(limits.MaxTasksPerUser)
		}
		old, err := tx.All()
		if err != nil {
			return nil, err
		}
		if changes, err = diff(old, w.Tasks, change); err != nil {
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

	case WriteCreate:
		task, err := ParseTask(w.Task, limits.MaxTaskBytes)
		if err != nil {
			return nil, err
		}
		if _, exists, err := tx.Get(task.ID); err != nil {
			return nil, err
		} else if exists {
			return nil, errTaskExists(task.ID)
		}
		if tx.TaskCount() >= limits.MaxTasksPerUser {
			return nil, errTooManyTasks(limits.MaxTasksPerUser)
		}
		if err := tx.Put(task.ID, task.Raw); err != nil {
			return nil, err
		}
		changes = []Change{change(ChangeCreate, task.ID, task.Raw)}

	case WriteUpdate:
		stored, exists, err := tx.Get(w.TaskID)
		if err != nil {
			return nil, err
		}
		if !exists {
			return nil, errTaskNotFound(w.TaskID)
		}
		task, err := MergeTask(stored, w.Task, limits.MaxTaskBytes)
		if err != nil {
			return nil, err
		}
		if task.ID != w.TaskID { // renumbered (clients do it when a task is done)
			if _, taken, err := tx.Get(task.ID); err != nil {
				return nil, err
			} else if taken {
				return nil, errTaskExists(task.ID)
			}
			if err := tx.Delete(w.TaskID); err != nil {
				return nil, err
			}
		}
		if err := tx.Put(task.ID, task.Raw); err != nil {
			return nil, err
		}
		changes = []Change{change(ChangeUpdate, task.ID, task.Raw)}

	case WriteDelete:
		id := w.TaskID
		if w.TaskIndex != "" {
			all, err := tx.All()
			if err != nil {
				return nil, err
			}
			i := slices.IndexFunc(all, func(t Task) bool { return taskIndexIs(t.Raw, w.TaskIndex) })
			if i < 0 {
				return nil, errTaskIndexNotFound(w.TaskIndex)
			}
			id = all[i].ID
		} else if _, exists, err := tx.Get(id); err != nil {
			return nil, err
		} else if !exists {
			return nil, errTaskNotFound(id)
		}
		if err := tx.Delete(id); err != nil {
			return nil, err
		}
		changes = []Change{change(ChangeDelete, id, nil)}

	default:
		return nil, fmt.Errorf("feed: unknown write kind %d", w.Kind)
	}
	if w.Version != nil {
		if err := tx.SetVersion(w.Version); err != nil {
			return nil, err
		}
	}
	return changes, nil
}

// diff turns a write-all into per-task changes: deletes, then updates, then
// creates, each in id order. Identical tasks produce nothing. Two new tasks
// with one id are refused: the node refuses them first, but the backend's
// key is at stake, whoever the caller.
func diff(old, new []Task, change func(ChangeKind, int64, json.RawMessage) Change) ([]Change, error) {
	oldByID := make(map[int64]json.RawMessage, len(old))
	for _, t := range old {
		oldByID[t.ID] = t.Raw
	}
	newIDs := make(map[int64]bool, len(new))
	sorted := slices.Clone(new)
	slices.SortFunc(sorted, func(a, b Task) int { return cmp.Compare(a.ID, b.ID) })
	var deletes, updates, creates []Change
	for _, t := range sorted {
		if newIDs[t.ID] {
			return nil, errInvalidTask("duplicate task id %d", t.ID)
		}
		newIDs[t.ID] = true
		prev, existed := oldByID[t.ID]
		switch {
		case !existed:
			creates = append(creates, change(ChangeCreate, t.ID, t.Raw))
		case string(prev) != string(t.Raw):
			updates = append(updates, change(ChangeUpdate, t.ID, t.Raw))
		}
	}
	for _, t := range old {
		if !newIDs[t.ID] {
			deletes = append(deletes, change(ChangeDelete, t.ID, nil))
		}
	}
	return slices.Concat(deletes, updates, creates), nil
}
