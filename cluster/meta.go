package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// Node states gossiped in the metadata.
const (
	StateReady    = "ready"
	StateDraining = "draining"
)

const (
	// MaxConns is the largest connection count a node may gossip and be
	// believed: a hundred times what one process can hold today.
	MaxConns = 10_000_000
	// metaRefresh is how often Update gossips the metadata when nothing in
	// it changed, so that peers can tell a quiet node from a stuck one.
	metaRefresh = 2 * time.Second
	// staleAfter: a peer whose metadata has not advanced for this long is
	// ignored, as its figures may be out of date. Two refreshes and the
	// gossip's spread fit in it.
	staleAfter = 5 * time.Second
)

// Meta is what a node gossips about itself. It must stay under
// memberlist's 512-byte metadata limit (checked in NodeMeta). Fields may be
// added; nodes ignore fields they do not know.
type Meta struct {
	Client  string `json:"a,omitempty"`
	Conns   int    `json:"c"`
	State   string `json:"s"`
	Version string `json:"v,omitempty"`
	// Seq goes up each time the node gossips its metadata: a peer believes
	// a node's figures only while it sees Seq change (see staleAfter).
	Seq uint64 `json:"n,omitempty"`
}

// parseMeta reads and checks a peer's metadata. Anyone who can join a
// cluster without a key can gossip anything: a node acts only on metadata
// of the expected shape with plausible figures.
func parseMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, errors.New("no metadata")
	}
	if len(b) > memberlist.MetaMaxSize {
		return Meta{}, fmt.Errorf("%d bytes, over %d", len(b), memberlist.MetaMaxSize)
	}
	if b = bytes.TrimSpace(b); len(b) == 0 || b[0] != '{' {
		return Meta{}, errors.New("not a JSON object")
	}
	var w struct {
		Client  *string `json:"a"`
		Conns   *int64  `json:"c"`
		State   *string `json:"s"`
		Version string  `json:"v"`
		Seq     uint64  `json:"n"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return Meta{}, errors.New("not of the expected shape")
	}
	switch {
	case w.Conns == nil:
		return Meta{}, errors.New("no connection count")
	case *w.Conns < 0 || *w.Conns > MaxConns:
		return Meta{}, fmt.Errorf("connection count %d outside 0..%d", *w.Conns, MaxConns)
	case w.State == nil || *w.State != StateReady && *w.State != StateDraining:
		return Meta{}, errors.New("state neither ready nor draining")
	case w.Client == nil:
		return Meta{}, errors.New("no client address")
	}
	if ap, err := netip.ParseAddrPort(*w.Client); err != nil || ap.Port() == 0 {
		return Meta{}, errors.New("client address is not ip:port")
	}
	return Meta{Client: *w.Client, Conns: int(*w.Conns), State: *w.State, Version: w.Version, Seq: w.Seq}, nil
}
