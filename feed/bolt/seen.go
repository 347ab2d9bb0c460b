package bolt

import (
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// seenCache keeps, for the devices that wrote lately, the last-seen time
// the device_seen bucket holds, so that a write need not open the user's
// bucket there to find that its device was stamped less than a minute ago
// (feed.SeenStale), which is nearly always.
//
// It belongs to the committer goroutine: only ops, run by commit, use it.
// Every change of device_seen after Open is made by an op through it, so
// each entry is the time stored as the transaction in progress sees it
// (zero: none, or never seen): written through by stamp, dropped by
// removeDevice, filled by lastSeen from what it read. A transaction that
// fails (bbolt rolls it back) drops the whole cache, so that an entry never
// outlives a change that did not commit; dropping entries is always safe,
// they are read again.
type seenCache struct {
	at map[seenKey]time.Time
}

type seenKey struct{ user, device string }

// maxSeenCache bounds the cache (about 150 bytes an entry): past it, it
// starts again empty.
const maxSeenCache = 1 << 17

// lastSeen is a device's last-seen time (zero: never).
func (c *seenCache) lastSeen(tx *bbolt.Tx, userID, deviceID string) time.Time {
	if t, ok := c.at[seenKey{userID, deviceID}]; ok {
		return t
	}
	t := lastSeen(tx, userID, deviceID)
	c.set(userID, deviceID, t)
	return t
}

// stamp sets a device's last-seen time (stampSeen).
func (c *seenCache) stamp(tx *bbolt.Tx, userID, deviceID string, seen time.Time) error {
	return c.writeThrough(userID, deviceID, seen, func() error { return stampSeen(tx, userID, deviceID, seen) })
}

// putDevice registers a device of the user (putDevice).
func (c *seenCache) putDevice(tx *bbolt.Tx, userID, deviceID string, seen time.Time) error {
	return c.writeThrough(userID, deviceID, seen, func() error { return putDevice(tx, userID, deviceID, seen) })
}

// writeThrough runs write, which stores seen as the device's last-seen
// time, and caches what it stored; the entry is dropped first, so that a
// failed write leaves none.
func (c *seenCache) writeThrough(userID, deviceID string, seen time.Time, write func() error) error {
	delete(c.at, seenKey{userID, deviceID})
	if err := write(); err != nil {
		return err
	}
	c.set(userID, deviceID, decodeSeen(stampValue(seen)))
	return nil
}

// removeDevice unregisters a device of the user (removeDevice).
func (c *seenCache) removeDevice(tx *bbolt.Tx, userID string, deviceID []byte) error {
	delete(c.at, seenKey{userID, string(deviceID)})
	return removeDevice(tx, userID, deviceID)
}

// set records a stored time, the key's strings copied when first seen.
func (c *seenCache) set(userID, deviceID string, t time.Time) {
	k := seenKey{userID, deviceID}
	if _, ok := c.at[k]; ok {
		c.at[k] = t
		return
	}
	if c.at == nil || len(c.at) >= maxSeenCache {
		c.at = make(map[seenKey]time.Time)
	}
	c.at[seenKey{strings.Clone(userID), strings.Clone(deviceID)}] = t
}

// reset forgets everything: a transaction failed.
func (c *seenCache) reset() { c.at = nil }
