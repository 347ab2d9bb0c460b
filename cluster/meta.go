package cluster

// Node states gossiped in the metadata.
const (
	StateReady    = "ready"
	StateDraining = "draining"
)

// Meta is what a node gossips about itself. It must stay under
// memberlist's 512-byte metadata limit (checked in NodeMeta).
type Meta struct {
	Client  string `json:"a,omitempty"`
	Conns   int    `json:"c"`
	State   string `json:"s"`
	Version string `json:"v,omitempty"`
}
