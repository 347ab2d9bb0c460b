// Package pgtest gives tests a fresh schema in the test PostgreSQL.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultPostgres is the test database used when KRONOS_TEST_POSTGRES is
// not set: the local server with trust authentication.
const DefaultPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// URL returns the URL of a fresh, empty schema in the test
// database (KRONOS_TEST_POSTGRES, or DefaultPostgres), dropped when the test
// ends. When the default server does not answer, the test is skipped,
// saying so; when KRONOS_TEST_POSTGRES names one (as CI does), it fails.
func URL(t testing.TB) string {
	t.Helper()
	base, explicit := os.LookupEnv("KRONOS_TEST_POSTGRES")
	if base == "" {
		base = DefaultPostgres
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		if explicit {
			t.Fatalf("KRONOS_TEST_POSTGRES=%s is not reachable: %v", redact(base), err)
		}
		t.Skipf("SKIPPED: no PostgreSQL at %s (%v); set KRONOS_TEST_POSTGRES to a reachable database", redact(base), err)
	}
	defer conn.Close(context.Background())
	var suffix [6]byte
	rand.Read(suffix[:])
	schema := "kronos_test_" + hex.EncodeToString(suffix[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("KRONOS_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
