package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
)

// backupPrefix and backupSuffix name the files a backup into a directory
// writes: kronos-20060102T150405.000Z.db, which sort by time.
const (
	backupPrefix = "kronos-"
	backupSuffix = ".db"
)

// runBackup is `kronos backup`: a consistent copy of a running node's
// embedded store, through its admin port, into a file.
func runBackup(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kronos backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "the node's admin address, host:port")
	out := fs.String("out", "", "file to write, or a directory (ending in /, or existing) to write kronos-<UTC time>.db into (e.g. by a CronJob)")
	keep := fs.Int("keep", 0, "with a directory: keep only the newest N backups in it (0: keep all)")
	timeout := fs.Duration("timeout", time.Hour, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kronos backup --admin HOST:PORT --out FILE|DIR/ [--keep N]")
		fmt.Fprintln(stderr, "Copies a running node's embedded store (bbolt) while it serves: a consistent snapshot.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageCode(err)
	}
	if *out == "" || fs.NArg() > 0 || *keep < 0 {
		fs.Usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	path, dir := *out, ""
	if st, err := os.Stat(path); strings.HasSuffix(path, "/") || err == nil && st.IsDir() {
		dir = path
		if err := os.MkdirAll(dir, 0o750); err != nil {
			fmt.Fprintln(stderr, "kronos backup:", err)
			return 1
		}
		path = filepath.Join(dir, backupPrefix+time.Now().UTC().Format("20060102T150405.000Z")+backupSuffix)
	}
	size, counts, err := fetchBackup(ctx, *admin, path)
	if err != nil {
		fmt.Fprintln(stderr, "kronos backup:", err)
		return 1
	}
	fmt.Fprintf(stdout, "backup: %s, %d bytes: %d users, %d devices, %d tasks\n", path, size, counts.Users, counts.Devices, counts.Tasks)
	if dir != "" && *keep > 0 {
		removed, err := pruneBackups(dir, *keep)
		for _, f := range removed {
			fmt.Fprintln(stdout, "removed old backup", f)
		}
		if err != nil {
			fmt.Fprintln(stderr, "kronos backup: removing old backups:", err)
			return 1
		}
	}
	return 0
}

// fetchBackup downloads GET /backup into path: into path.tmp first, synced
// and checked (bbolt's consistency check, the store's buckets), then
// renamed, so that path is only ever a whole, sound copy.
func fetchBackup(ctx context.Context, admin, path string) (int64, feed.Counts, error) {
	var counts feed.Counts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/backup", nil)
	if err != nil {
		return 0, counts, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, counts, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, counts, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	if resp.ContentLength < 0 {
		return 0, counts, errors.New("the node did not say how long the copy is: not a Kronos admin port?")
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, counts, err
	}
	n, err := io.Copy(f, resp.Body)
	if err == nil && n != resp.ContentLength {
		err = fmt.Errorf("copy cut short: %d of %d bytes", n, resp.ContentLength)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if counts, err = bolt.CheckFile(tmp, time.Second); err != nil {
			err = fmt.Errorf("the copy does not check: %w", err)
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, counts, err
	}
	return n, counts, syncDir(filepath.Dir(path))
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// pruneBackups removes all but the newest keep backups in dir.
func pruneBackups(dir string, keep int) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, backupPrefix+"*"+backupSuffix))
	if err != nil {
		return nil, err
	}
	slices.Sort(files) // the names sort by time
	var removed []string
	for len(files) > keep {
		if err := os.Remove(files[0]); err != nil {
			return removed, err
		}
		removed, files = append(removed, files[0]), files[1:]
	}
	return removed, nil
}

// usageCode maps a flag parsing error to an exit code: 0 for -h.
func usageCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
