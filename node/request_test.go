package node

import (
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
)

var requestSeeds = []string{
	`{"type":"login","user_id":"","device_id":"","version":""}`,
	`{"type":"read-all","user_id":"u","device_id":"d"}`,
	`{"type":"write-all","data":{"tasks":[{"id":1,"desc":"a","tags":["x"]}]},"version":"1"}`,
	`{"type":"write-all","tasks":[{"id":1},{"id":1}],"version":1732540800123}`,
	`{"type":"create","task":{"id":-3,"desc":null,"start":1700000000},"version":1}`,
	`{"type":"update","task_id":"7","task":{"id":8,"done":true},"version":2}`,
	`{"type":"delete","task_index":"12","version":3}`,
	`{"type":"delete","task_id":1e2}`,
	`{"type":["x"]}`,
	`[1,2]`,
	`{"type":"create","task":{"id":9007199254740993}}`,
	`{"type":"create","version":{"a":1},"task":{"id":1}}`,
}

// FuzzDecodeRequest: no input panics, and whatever is accepted is well
// formed for the store.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	limits := feed.Limits{}
	limits.SetDefaults()
	f.Fuzz(func(t *testing.T, p []byte) {
		req, typ, err := decodeRequest(p)
		if err != nil || !knownType(typ) || typ == typeLogin || typ == typeReadAll {
			return
		}
		w, err := buildWrite(typ, req, limits)
		if err != nil {
			if _, ok := err.(*errRequest); !ok {
				if _, ok := err.(*feed.Error); !ok {
					t.Fatalf("error of an unexpected kind %T: %v", err, err)
				}
			}
			return
		}
		if w.Version != nil {
			if _, err := feed.CheckVersion(w.Version); err != nil {
				t.Fatalf("accepted version %s: %v", w.Version, err)
			}
		}
		for _, task := range w.Tasks {
			again, err := feed.ParseTask(task.Raw, limits.MaxTaskBytes)
			if err != nil || again.ID != task.ID {
				t.Fatalf("accepted task %s does not parse again: %v", task.Raw, err)
			}
		}
		if w.Kind == feed.WriteCreate {
			if _, err := feed.ParseTask(w.Task, limits.MaxTaskBytes); err != nil {
				t.Fatalf("accepted create task %s: %v", w.Task, err)
			}
		}
		if (w.TaskID > feed.MaxTaskID || w.TaskID < -feed.MaxTaskID) && w.TaskIndex == "" {
			t.Fatalf("task id %d out of range", w.TaskID)
		}
	})
}
