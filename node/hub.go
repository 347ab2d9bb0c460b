package node

import (
	"hash/maphash"
	"sync"
)

const hubShards = 64

// hub maps a user to the sessions of that user on this node. It is sharded
// so that logins and fan-out of different users rarely share a lock.
type hub struct {
	seed    maphash.Seed
	shards  [hubShards]hubShard
	devices [hubShards]deviceShard
}

type hubShard struct {
	mu    sync.RWMutex
	users map[string][]*session
}

// deviceShard indexes this node's live login of each device, for takeovers
// announced by other nodes. Plain maps: a sync.Map entry per connection
// costs several times more memory.
type deviceShard struct {
	mu sync.Mutex
	m  map[string]*session
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].users = make(map[string][]*session)
		h.devices[i].m = make(map[string]*session)
	}
	return h
}

func (h *hub) deviceShard(device string) *deviceShard {
	return &h.devices[maphash.String(h.seed, device)%hubShards]
}

// setDevice records s as the device's current login here.
func (h *hub) setDevice(s *session) {
	ds := h.deviceShard(s.deviceID)
	ds.mu.Lock()
	ds.m[s.deviceID] = s
	ds.mu.Unlock()
}

// clearDevice forgets s, unless a newer login of the device replaced it.
func (h *hub) clearDevice(s *session) {
	ds := h.deviceShard(s.deviceID)
	ds.mu.Lock()
	if ds.m[s.deviceID] == s {
		delete(ds.m, s.deviceID)
	}
	ds.mu.Unlock()
}

func (h *hub) device(id string) *session {
	ds := h.deviceShard(id)
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.m[id]
}

// shardDevices appends the devices logged in here of one device shard.
func (h *hub) shardDevices(i int, buf []string) []string {
	ds := &h.devices[i]
	ds.mu.Lock()
	for id := range ds.m {
		buf = append(buf, id)
	}
	ds.mu.Unlock()
	return buf
}

// userDevices appends the user's devices logged in here (sessions whose
// login finished: before that a session's deviceID may still change).
func (h *hub) userDevices(userID string, buf []string) []string {
	sh := h.shard(userID)
	sh.mu.RLock()
	for _, s := range sh.users[userID] {
		if s.active.Load() {
			buf = append(buf, s.deviceID)
		}
	}
	sh.mu.RUnlock()
	return buf
}

func (h *hub) shard(userID string) *hubShard {
	return &h.shards[maphash.String(h.seed, userID)%hubShards]
}

func (h *hub) add(s *session) {
	sh := h.shard(s.userID)
	sh.mu.Lock()
	sh.users[s.userID] = append(sh.users[s.userID], s)
	sh.mu.Unlock()
}

func (h *hub) remove(s *session) {
	sh := h.shard(s.userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := sh.users[s.userID]
	for i, other := range list {
		if other == s {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			break
		}
	}
	if len(list) == 0 {
		delete(sh.users, s.userID)
	} else {
		sh.users[s.userID] = list
	}
}

// sessions appends the user's sessions to buf.
func (h *hub) sessions(userID string, buf []*session) []*session {
	sh := h.shard(userID)
	sh.mu.RLock()
	buf = append(buf, sh.users[userID]...)
	sh.mu.RUnlock()
	return buf
}

// users counts the users with at least one session here.
func (h *hub) users() int {
	n := 0
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		n += len(sh.users)
		sh.mu.RUnlock()
	}
	return n
}
