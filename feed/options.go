package feed

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/internal/check"
)

// Limits bound what one user may store. Zero fields take their defaults.
type Limits struct {
	MaxTasksPerUser   int // default 10000
	MaxDevicesPerUser int // default 50
	MaxTaskBytes      int // one task, compact JSON; default 64 KiB
}

// SetDefaults fills zero fields with their defaults.
func (l *Limits) SetDefaults() {
	if l.MaxTasksPerUser == 0 {
		l.MaxTasksPerUser = 10000
	}
	if l.MaxDevicesPerUser == 0 {
		l.MaxDevicesPerUser = 50
	}
	if l.MaxTaskBytes == 0 {
		l.MaxTaskBytes = 64 << 10
	}
}

// Validate reports every field that is neither zero (the default) nor valid.
func (l Limits) Validate() error {
	var c check.List
	c.Add(l.MaxTasksPerUser < 0, "MaxTasksPerUser", l.MaxTasksPerUser, "must be 0 (default 10000) or more")
	c.Add(l.MaxDevicesPerUser < 0, "MaxDevicesPerUser", l.MaxDevicesPerUser, "must be 0 (default 50) or more")
	c.Add(l.MaxTaskBytes < 0, "MaxTaskBytes", l.MaxTaskBytes, "must be 0 (default 65536) or more")
	return c.Err()
}

// Options configure a backend. Zero fields take their defaults.
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
	// DeviceIdleAfter is how long a device may go unseen before it counts
	// as connected nowhere: at the device limit, a login that registers a
	// device retires the user's least recently seen device unseen this
	// long. Nodes refresh the devices connected to them (TouchDevices) more
	// often than this. Default 30m.
	DeviceIdleAfter time.Duration
	// Now is the clock of the devices' last-seen times. Default time.Now.
	Now func() time.Time

	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// SetDefaults fills zero fields with their defaults.
func (o *Options) SetDefaults() {
	o.Limits.SetDefaults()
	if o.ChangeLogRetention == 0 {
		o.ChangeLogRetention = 24 * time.Hour
	}
	if o.ChangeLogMaxRows == 0 {
		o.ChangeLogMaxRows = 1_000_000
	}
	if o.PruneInterval == 0 {
		o.PruneInterval = time.Minute
	}
	if o.DeviceIdleAfter == 0 {
		o.DeviceIdleAfter = 30 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate reports every field that is neither zero (the default) nor valid.
func (o *Options) Validate() error {
	var c check.List
	c.Merge("Limits.", o.Limits.Validate())
	c.Add(o.ChangeLogRetention < 0, "ChangeLogRetention", o.ChangeLogRetention, "must be 0 (default 24h) or more")
	c.Add(o.ChangeLogMaxRows < 0, "ChangeLogMaxRows", o.ChangeLogMaxRows, "must be 0 (default 1000000) or more")
	c.Add(o.PruneInterval < 0, "PruneInterval", o.PruneInterval, "must be 0 (default 1m) or more")
	c.Add(o.DeviceIdleAfter < 0, "DeviceIdleAfter", o.DeviceIdleAfter, "must be 0 (default 30m) or more")
	return c.Err()
}
