package cluster

import (
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

type fakeLocal struct{ conns int }

func (f fakeLocal) Local() (int, string) { return f.conns, StateDraining }
func (fakeLocal) TakeOver(string, int64) {}

// memberlist panics on metadata over 512 bytes: a node refuses to start
// with too long a client address or version, and NodeMeta never hands
// memberlist more than its limit.
func TestMetadataStaysUnderTheLimit(t *testing.T) {
	_, err := Start(Options{Bind: "127.0.0.1:0", ClientAddr: strings.Repeat("x", 600), Logger: zerolog.Nop()}, fakeLocal{})
	if err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("an oversized client address was accepted: %v", err)
	}
	c, err := Start(Options{Bind: "127.0.0.1:0", ClientAddr: "[2001:db8::1234:5678:9abc:def0]:5000",
		Version: "v1.2.3-rc.4+build.5678", Logger: zerolog.Nop()}, fakeLocal{conns: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Leave(0)
	d := &delegate{c}
	if meta := d.NodeMeta(memberlist.MetaMaxSize); len(meta) > memberlist.MetaMaxSize || !strings.Contains(string(meta), `"s":"draining"`) {
		t.Fatalf("metadata %d bytes: %s", len(meta), meta)
	}
	if meta := d.NodeMeta(40); len(meta) > 40 {
		t.Fatalf("metadata over a small limit: %d bytes", len(meta))
	}
	if members := c.Members(); len(members) != 1 || members[0].Conns != 1<<30 || members[0].Client == "" {
		t.Fatalf("members: %+v", members)
	}
}

func TestTakeoverMessage(t *testing.T) {
	var got struct {
		device string
		at     int64
	}
	c := &Cluster{handler: takeoverRecorder(func(d string, at int64) { got.device, got.at = d, at })}
	c.receive([]byte("\x011732540800123456789 0f4b0e7c-3a1e-4f67"))
	if got.device != "0f4b0e7c-3a1e-4f67" || got.at != 1732540800123456789 {
		t.Fatalf("got %+v", got)
	}
	c.receive([]byte("\x02junk")) // unknown kinds are ignored
	c.receive([]byte{1})
}

type takeoverRecorder func(string, int64)

func (takeoverRecorder) Local() (int, string)          { return 0, StateReady }
func (f takeoverRecorder) TakeOver(d string, at int64) { f(d, at) }
