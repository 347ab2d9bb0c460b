package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kronos-sync/kronos-server/feed/migrate"
)

// progress shows how far a migration is on stderr: a bar redrawn in place
// on a terminal; otherwise (a log, a pipe, a Kubernetes Job) one line per
// whole percent, which a reader can follow and a log keeps short.
type progress struct {
	w       io.Writer
	tty     bool
	start   time.Time
	last    migrate.Progress
	lastPct int64
	shown   bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now(), lastPct: -1}
	if f, ok := w.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), ioctlGetTermios)
		p.tty = err == nil
	}
	return p
}

func (p *progress) update(m migrate.Progress) {
	p.last = m
	pct := int64(100)
	if m.Total > 0 {
		pct = m.Done * 100 / m.Total
	}
	rate := float64(m.Done) / max(time.Since(p.start).Seconds(), 0.001)
	if p.tty {
		const width = 30 // \x1b[K clears what a longer line left behind
		fill := int(pct * width / 100)
		fmt.Fprintf(p.w, "\r[%s%s] %d/%d users %3d%%  %d copied  %.0f users/s\x1b[K",
			strings.Repeat("=", fill), strings.Repeat(" ", width-fill), m.Done, m.Total, pct, m.Copied, rate)
		p.shown = true
		return
	}
	if pct != p.lastPct {
		p.lastPct = pct
		fmt.Fprintf(p.w, "progress: %d/%d users (%d%%), %d copied, %.0f users/s\n", m.Done, m.Total, pct, m.Copied, rate)
	}
}

// finish ends the bar's line.
func (p *progress) finish() {
	if p.tty && p.shown {
		fmt.Fprintln(p.w)
	}
}
