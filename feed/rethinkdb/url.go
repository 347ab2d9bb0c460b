package rethinkdb

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
)

// rethinkConfig is what a rethinkdb:// URL says.
type rethinkConfig struct {
	opts r.ConnectOpts
}

// parseRethinkURL reads
// rethinkdb://[user[:password]@]host[:port][,host2[:port]…][/database]
// with options tls=true, tls_ca=FILE, tls_server_name=NAME,
// tls_skip_verify=true, max_open=N, initial_cap=N (max_idle, its old
// name, is still read), discover=true,
// timeout=DURATION.
func parseRethinkURL(raw string) (rethinkConfig, error) {
	rest, ok := strings.CutPrefix(raw, "rethinkdb://")
	if !ok {
		return rethinkConfig{}, errors.New("want rethinkdb://")
	}
	var cfg rethinkConfig
	cfg.opts.Database = "kronos"
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		userinfo := rest[:at]
		rest = rest[at+1:]
		user, pass, _ := strings.Cut(userinfo, ":")
		var err error
		if cfg.opts.Username, err = url.PathUnescape(user); err != nil {
			return cfg, err
		}
		if cfg.opts.Password, err = url.PathUnescape(pass); err != nil {
			return cfg, err
		}
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, db, _ := strings.Cut(rest, "/")
	if db != "" {
		cfg.opts.Database = db
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			continue
		}
		if !strings.Contains(h, ":") {
			h += ":28015"
		}
		cfg.opts.Addresses = append(cfg.opts.Addresses, h)
	}
	if len(cfg.opts.Addresses) == 0 {
		return cfg, errors.New("no host")
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return cfg, err
	}
	var tlsCfg *tls.Config
	for key, values := range params {
		v := values[len(values)-1]
		switch key {
		case "tls":
			if v == "true" {
				tlsCfg = cmpTLS(tlsCfg)
			}
		case "tls_ca":
			pem, err := os.ReadFile(v)
			if err != nil {
				return cfg, fmt.Errorf("tls_ca: %w", err)
			}
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("tls_ca %s: no certificate", v)
			}
		case "tls_server_name":
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.ServerName = v
		case "tls_skip_verify":
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.InsecureSkipVerify = v == "true"
		case "max_open", "initial_cap", "max_idle":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return cfg, fmt.Errorf("%s=%q: want a positive number", key, v)
			}
			if key == "max_open" {
				cfg.opts.MaxOpen = n
			} else {
				cfg.opts.InitialCap = n
			}
		case "discover":
			cfg.opts.DiscoverHosts = v == "true"
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return cfg, fmt.Errorf("timeout=%q: %w", v, err)
			}
			cfg.opts.Timeout = d
		default:
			return cfg, fmt.Errorf("unknown option %q", key)
		}
	}
	cfg.opts.TLSConfig = tlsCfg
	return cfg, nil
}

func cmpTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return c
}
