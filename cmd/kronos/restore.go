package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kronos-sync/kronos-server/feed/bolt"
)

// runRestore is `kronos restore`: put a backup in place of a stopped node's
// embedded store.
func runRestore(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kronos restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the backup file (from kronos backup)")
	store := fs.String("store", "", "the stopped node's store: bolt:PATH")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kronos restore --from FILE --store bolt:PATH")
		fmt.Fprintln(stderr, "Replaces a stopped node's embedded store with a backup; the file it replaces is kept beside it.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageCode(err)
	}
	path, ok := strings.CutPrefix(*store, "bolt:")
	path = strings.TrimPrefix(path, "//")
	if *from == "" || !ok || path == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	kept, err := restore(*from, path, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "kronos restore:", err)
		return 1
	}
	if kept != "" {
		fmt.Fprintln(stdout, "the replaced file is kept as", kept)
	}
	return 0
}

// restore checks the backup, copies it beside path, checks the copy, and
// renames it over path while holding the lock a node would take on path
// (bbolt's flock), so that a running node is refused, not overwritten. The
// file it replaces stays as path.replaced-<time> (a hard link: no copy).
func restore(from, path string, stdout io.Writer) (kept string, err error) {
	counts, err := bolt.CheckFile(from, time.Second)
	if err != nil {
		return "", fmt.Errorf("%s is not a whole Kronos store: %w", from, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return "", err
	}
	old, err := os.OpenFile(path, os.O_RDWR, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", err
	default:
		defer old.Close()
		if err := unix.Flock(int(old.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) {
				return "", fmt.Errorf("%s is in use (a node is running on it): stop the node first", path)
			}
			return "", fmt.Errorf("locking %s: %w", path, err)
		}
	}
	tmp := path + ".restore.tmp"
	if err := copyFile(from, tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if _, err := bolt.CheckFile(tmp, time.Second); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("the copy does not check: %w", err)
	}
	if old != nil {
		kept = path + ".replaced-" + time.Now().UTC().Format("20060102T150405Z")
		if err := os.Link(path, kept); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("keeping the replaced file: %w", err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return kept, err
	}
	fmt.Fprintf(stdout, "restored %s to %s: %d users, %d devices, %d tasks\n", from, path, counts.Users, counts.Devices, counts.Tasks)
	return kept, nil
}

// copyFile copies src to dst and syncs it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
