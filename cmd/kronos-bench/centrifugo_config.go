package main

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strconv"
)

// centrifugoModule is the Centrifugo compared with, for `go install`;
// compare.sh names the same.
const centrifugoModule = "github.com/centrifugal/centrifugo/v6@v6.9.1"

// centrifugoConfig is the Centrifugo v6 configuration that the load tool
// needs, in one place for compare.sh and the tests. The key names are
// v6's (internal/configtypes in its source).
//
//   - The memory engine with no history: a pure relay that keeps nothing.
//   - Connection tokens are HS256 JWTs signed with secret; no anonymous
//     or insecure clients.
//   - The kronos namespace: a user may subscribe to kronos:user#<own id>
//     (allow_user_limited_channels) and publish to what it is subscribed
//     to (allow_publish_for_subscriber).
//   - No limit on connections, per user or per second (0 is none, v6's
//     default, written out); each connection's outgoing queue is 8 MiB,
//     Kronos's --max-queue-bytes default.
//   - Prometheus /metrics on the internal port; no HTTP API; no usage
//     statistics sent out (the runs are loopback only).
func centrifugoConfig(secret string, port, internalPort int) map[string]any {
	return map[string]any{
		"http_server": map[string]any{
			"address":          "127.0.0.1",
			"port":             port,
			"internal_address": "127.0.0.1",
			"internal_port":    strconv.Itoa(internalPort), // a string in v6
		},
		"engine": map[string]any{"type": "memory"},
		"log":    map[string]any{"level": "warn"},
		"client": map[string]any{
			"insecure":              false,
			"token":                 map[string]any{"hmac_secret_key": secret},
			"connection_limit":      0,
			"user_connection_limit": 0,
			"connection_rate_limit": 0,
			"channel_limit":         128,
			"queue_max_size":        8 << 20,
		},
		"channel": map[string]any{
			"namespaces": []any{map[string]any{
				"name":                         centrifugoNamespace,
				"allow_user_limited_channels":  true,
				"allow_publish_for_subscriber": true,
			}},
		},
		"prometheus":  map[string]any{"enabled": true},
		"http_api":    map[string]any{"disabled": true},
		"usage_stats": map[string]any{"disabled": true},
	}
}

// runCentrifugoConfig prints the configuration as JSON.
func runCentrifugoConfig(args []string) error {
	fs := flag.NewFlagSet("centrifugo-config", flag.ContinueOnError)
	secret := fs.String("secret", "", "HMAC key for connection tokens (required)")
	port := fs.Int("port", 8000, "client port (WebSocket), on 127.0.0.1")
	internal := fs.Int("internal-port", 9000, "internal port (/metrics), on 127.0.0.1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *secret == "" {
		return errors.New("--secret is required")
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(centrifugoConfig(*secret, *port, *internal))
}
