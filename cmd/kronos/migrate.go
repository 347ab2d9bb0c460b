package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/migrate"
	"github.com/kronos-sync/kronos-server/feed/stores"
)

// runMigrate is `kronos migrate`: copy every user from one store to another.
func runMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kronos migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "source store URL: bolt:PATH, postgres://… or rethinkdb://… (default $KRONOS_MIGRATE_FROM)")
	to := fs.String("to", "", "target store URL (default $KRONOS_MIGRATE_TO)")
	merge := fs.Bool("merge", false, "copy over a target that holds other data: its own users are kept, users in both take the source's tasks and version")
	pageSize := fs.Int("page-size", 200, "users read at a time")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kronos migrate --from STORE_URL --to STORE_URL [--merge]")
		fmt.Fprintln(stderr, "Copies users, devices, tasks and versions, byte for byte. Run it again to resume or to check: users")
		fmt.Fprintln(stderr, "already copied are skipped. Stop the nodes on a bolt source (or migrate from a kronos backup).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageCode(err)
	}
	// From the environment, the URLs (and their passwords) stay out of
	// process listings; they are not flag defaults, which -h would print.
	if *from == "" {
		*from = os.Getenv("KRONOS_MIGRATE_FROM")
	}
	if *to == "" {
		*to = os.Getenv("KRONOS_MIGRATE_TO")
	}
	if *from == "" || *to == "" || fs.NArg() > 0 || *pageSize < 1 {
		fs.Usage()
		return 2
	}
	if *from == *to {
		fmt.Fprintln(stderr, "kronos migrate: --from and --to name the same store")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The stores log only their problems, as text: this is a command.
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly}).Level(zerolog.WarnLevel).With().Timestamp().Logger()

	src, err := openForMigrate(ctx, *from, true, log)
	if err != nil {
		fmt.Fprintln(stderr, "kronos migrate: source:", err)
		return 1
	}
	defer src.Close()
	dst, err := openForMigrate(ctx, *to, false, log)
	if err != nil {
		fmt.Fprintln(stderr, "kronos migrate: target:", err)
		return 1
	}
	defer dst.Close()

	fmt.Fprintf(stdout, "migrating %s → %s\n", feed.RedactURL(*from), feed.RedactURL(*to))
	bar := newProgress(stderr)
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{Merge: *merge, PageSize: *pageSize, Progress: bar.update})
	bar.finish()
	if rep.TargetOnly+rep.Differed > 0 {
		fmt.Fprintf(stdout, "the target held %d users the source lacks and %d that it holds differently\n", rep.TargetOnly, rep.Differed)
	}
	if err != nil {
		fmt.Fprintln(stderr, "kronos migrate:", err)
		return 1
	}
	fmt.Fprintf(stdout, "users: %d copied, %d already there\n", rep.Copied, rep.Skipped)
	fmt.Fprintf(stdout, "source: %d users, %d devices, %d tasks\n", rep.Source.Users, rep.Source.Devices, rep.Source.Tasks)
	fmt.Fprintf(stdout, "target: %d users, %d devices, %d tasks (as expected)\n", rep.Target.Users, rep.Target.Devices, rep.Target.Tasks)
	return 0
}

// migrateStore is a store migrate reads and writes.
type migrateStore interface {
	feed.Store
	migrate.Target
}

// openForMigrate opens a store. A bolt source must exist (opening would
// create an empty one); a bolt file that a node holds is refused by
// bbolt's lock, after a second.
func openForMigrate(ctx context.Context, url string, source bool, log zerolog.Logger) (migrateStore, error) {
	if path, ok := strings.CutPrefix(url, "bolt:"); ok && source {
		if _, err := os.Stat(strings.TrimPrefix(path, "//")); err != nil {
			return nil, err
		}
	}
	b, err := stores.Open(ctx, url, feed.Options{Logger: log})
	if err != nil {
		if strings.HasPrefix(url, "bolt:") && strings.Contains(err.Error(), "timeout") {
			err = fmt.Errorf("%w: a node is running on this file: stop it, or migrate from a copy (kronos backup)", err)
		}
		return nil, err
	}
	s, ok := b.Store.(migrateStore)
	if !ok {
		b.Store.Close()
		return nil, errors.New("this store cannot be migrated") // every backend can: a new one must implement feed.Dumper and feed.Loader
	}
	return s, nil
}
