package cluster

import (
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logWriter routes memberlist's log lines ("[WARN] memberlist: …") into
// zerolog at the level they name.
type logWriter struct{ log zerolog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if i := strings.Index(line, "["); i >= 0 {
		line = line[i:]
	}
	level := zerolog.InfoLevel
	for prefix, l := range map[string]zerolog.Level{"[DEBUG]": zerolog.DebugLevel, "[INFO]": zerolog.DebugLevel,
		"[WARN]": zerolog.WarnLevel, "[ERR]": zerolog.ErrorLevel} {
		if strings.HasPrefix(line, prefix) {
			level, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	w.log.WithLevel(level).Msg(strings.TrimPrefix(line, "memberlist: "))
	return len(p), nil
}

// warnEvery is how often one warning may repeat. What other nodes send,
// and whoever reaches the gossip port without a key, must not be able to
// flood the log.
const warnEvery = 30 * time.Second

// warnLimiter lets each warning through at most once per warnEvery.
type warnLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time // by key; pruned as it grows
}

// do calls log unless key was logged within warnEvery.
func (w *warnLimiter) do(key string, log func()) {
	now := time.Now()
	w.mu.Lock()
	if w.last == nil {
		w.last = map[string]time.Time{}
	}
	if t, ok := w.last[key]; ok && now.Sub(t) < warnEvery {
		w.mu.Unlock()
		return
	}
	if len(w.last) >= 1000 { // keys carry node names, which anyone may make up
		for k, t := range w.last {
			if now.Sub(t) >= warnEvery {
				delete(w.last, k)
			}
		}
		if len(w.last) >= 1000 {
			w.mu.Unlock()
			return
		}
	}
	w.last[key] = now
	w.mu.Unlock()
	log()
}
