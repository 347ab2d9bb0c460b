// Package migrate copies every user from one backend to another (kronos
// migrate): users, devices, tasks and versions, byte for byte.
//
// The copy is idempotent per user: a user the target already holds
// identically is skipped, and each user is loaded whole or not at all (see
// feed.Loader). So a copy that was interrupted, however, is resumed by
// running it again, and running a finished copy again changes nothing. No
// progress file is kept: the target is the progress.
//
// A target that holds anything else (users the source lacks, or holds
// differently) is refused before anything is written, unless Options.Merge
// says to copy over it. The copy ends with a count check: the target must
// hold as many users, devices and tasks as the source, plus what only the
// target had.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/check"
)

// Target is a backend to copy into.
type Target interface {
	feed.Dumper
	feed.Loader
}

// Options configure a copy. Zero fields take their defaults.
type Options struct {
	// Merge copies over a target that holds users the source lacks (they
	// are kept) or holds differently (they take the source's tasks and
	// version, and keep their devices).
	Merge bool
	// PageSize is how many users are read at a time. Default 200.
	PageSize int
	// BatchTasks cuts a load once it holds this many tasks, so that one
	// transaction or query stays small. Default 20000.
	BatchTasks int
	// Progress is called after every page, from Run's goroutine.
	Progress func(Progress)
}

// Validate reports every field that is neither zero (the default) nor valid.
func (o *Options) Validate() error {
	var c check.List
	c.Add(o.PageSize < 0, "PageSize", o.PageSize, "must be 0 (default 200) or more")
	c.Add(o.BatchTasks < 0, "BatchTasks", o.BatchTasks, "must be 0 (default 20000) or more")
	return c.Err()
}

func (o *Options) setDefaults() {
	if o.PageSize == 0 {
		o.PageSize = 200
	}
	if o.BatchTasks == 0 {
		o.BatchTasks = 20000
	}
}

// Progress is how far a copy is.
type Progress struct {
	Done   int64 // source users looked at
	Total  int64 // users the source held at the start
	Copied int64 // users written to the target
}

// Report says what a copy did.
type Report struct {
	Copied  int64 // users written
	Skipped int64 // users the target already held identically
	// TargetOnly and Differed describe the target before the copy: users
	// only it had, and users it held with other data.
	TargetOnly, Differed int64
	// Source and Target are counted after the copy; Expected is what the
	// target should hold: the source's, plus what only the target had.
	Source, Target, Expected feed.Counts
}

var (
	// ErrTargetNotEmpty refuses a target that is not empty nor a copy, or
	// part of a copy, of the source.
	ErrTargetNotEmpty = errors.New("migrate: the target holds other data")
	// ErrCountMismatch says the final counts disagree.
	ErrCountMismatch = errors.New("migrate: counts differ after the copy")
)

// Run copies every user of src into dst. It returns the report with any
// error, as far as it got.
func Run(ctx context.Context, src feed.Dumper, dst Target, opts Options) (Report, error) {
	var rep Report
	if err := opts.Validate(); err != nil {
		return rep, err
	}
	opts.setDefaults()
	start, err := src.Count(ctx)
	if err != nil {
		return rep, fmt.Errorf("counting the source: %w", err)
	}
	before, err := dst.Count(ctx)
	if err != nil {
		return rep, fmt.Errorf("counting the target: %w", err)
	}
	var extra feed.Counts // what the target keeps beyond the source's
	if before.Users > 0 || before.Devices > 0 {
		if extra, err = compareTarget(ctx, src, dst, opts, &rep); err != nil {
			return rep, err
		}
		if !opts.Merge && rep.TargetOnly+rep.Differed > 0 {
			return rep, fmt.Errorf("%w: %d users that the source lacks and %d that it holds differently "+
				"(an earlier copy of the same source leaves neither); copy over them with merge",
				ErrTargetNotEmpty, rep.TargetOnly, rep.Differed)
		}
	}
	if err := copyUsers(ctx, src, dst, opts, start.Users, &rep); err != nil {
		return rep, err
	}
	if rep.Source, err = src.Count(ctx); err != nil {
		return rep, fmt.Errorf("counting the source: %w", err)
	}
	if rep.Target, err = dst.Count(ctx); err != nil {
		return rep, fmt.Errorf("counting the target: %w", err)
	}
	rep.Expected = rep.Source.Add(extra)
	if rep.Target != rep.Expected {
		changed := ""
		if rep.Source != start {
			changed = " (the source changed during the copy: run it again, with merge)"
		}
		return rep, fmt.Errorf("%w: the target holds %d users, %d devices, %d tasks; expected %d, %d, %d%s", ErrCountMismatch,
			rep.Target.Users, rep.Target.Devices, rep.Target.Tasks, rep.Expected.Users, rep.Expected.Devices, rep.Expected.Tasks, changed)
	}
	return rep, nil
}

// compareTarget reads the target against the source and returns what it
// holds beyond the source's data: its own users, and devices that source
// users lack there.
func compareTarget(ctx context.Context, src feed.Dumper, dst Target, opts Options, rep *Report) (feed.Counts, error) {
	var extra feed.Counts
	err := pages(ctx, dst, opts.PageSize, "target", func(page []feed.UserData) error {
		theirs, err := lookup(ctx, src, page)
		if err != nil {
			return fmt.Errorf("reading the source: %w", err)
		}
		for i := range page {
			u := &page[i]
			s, ok := theirs[u.ID]
			switch {
			case !ok:
				rep.TargetOnly++
				extra = extra.Add(feed.Counts{Users: 1, Devices: int64(len(u.Devices)), Tasks: int64(len(u.Tasks))})
			case !s.Equal(u):
				rep.Differed++
				for _, d := range u.Devices {
					if !slices.Contains(s.Devices, d) {
						extra.Devices++
					}
				}
			}
		}
		return nil
	})
	return extra, err
}

// copyUsers loads every source user the target does not hold identically.
func copyUsers(ctx context.Context, src feed.Dumper, dst Target, opts Options, total int64, rep *Report) error {
	var done int64
	err := pages(ctx, src, opts.PageSize, "source", func(page []feed.UserData) error {
		ours, err := lookup(ctx, dst, page)
		if err != nil {
			return fmt.Errorf("reading the target: %w", err)
		}
		var batch []feed.UserData
		tasks := 0
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			if err := dst.LoadUsers(ctx, batch); err != nil {
				return fmt.Errorf("loading into the target: %w", err)
			}
			rep.Copied += int64(len(batch))
			batch, tasks = batch[:0], 0
			return nil
		}
		for i := range page {
			u := &page[i]
			if t, ok := ours[u.ID]; ok && t.Equal(u) {
				rep.Skipped++
				continue
			}
			batch = append(batch, *u)
			if tasks += len(u.Tasks); tasks >= opts.BatchTasks {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
		done += int64(len(page))
		if opts.Progress != nil {
			opts.Progress(Progress{Done: done, Total: max(total, done), Copied: rep.Copied})
		}
		return nil
	})
	return err
}

// pages calls fn with every page of d's users, in d's order.
func pages(ctx context.Context, d feed.Dumper, size int, what string, fn func([]feed.UserData) error) error {
	after := ""
	for {
		page, err := d.DumpUsers(ctx, after, size)
		if err != nil {
			return fmt.Errorf("reading the %s: %w", what, err)
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				return err
			}
		}
		if len(page) < size {
			return nil
		}
		after = page[len(page)-1].ID
	}
}

// lookup reads the users of page from d, by id.
func lookup(ctx context.Context, d feed.Dumper, page []feed.UserData) (map[string]*feed.UserData, error) {
	ids := make([]string, len(page))
	for i := range page {
		ids[i] = page[i].ID
	}
	found, err := d.LookupUsers(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*feed.UserData, len(found))
	for i := range found {
		out[found[i].ID] = &found[i]
	}
	return out, nil
}
