package conn

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// certificates serves the client port's certificate and reloads it when its
// files change, as cert-manager or a mounted Kubernetes Secret rotate them.
// The sweeper checks the files once a second: two stat calls, no goroutine.
type certificates struct {
	certFile, keyFile string
	log               zerolog.Logger
	m                 *metrics

	cur   atomic.Pointer[tls.Certificate]
	stamp string // the files' sizes and times when cur was loaded; sweeper only
}

func loadCertificates(certFile, keyFile string, log zerolog.Logger, m *metrics) (*certificates, error) {
	k := &certificates{certFile: certFile, keyFile: keyFile, log: log, m: m}
	stamp, err := k.fileStamp()
	if err == nil {
		err = k.load(stamp)
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

func (k *certificates) config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return k.cur.Load(), nil },
	}
}

// fileStamp identifies the files' current contents well enough to notice a
// rotation: a Secret update swaps a symlink, which stat follows.
func (k *certificates) fileStamp() (string, error) {
	var stamp string
	for _, name := range []string{k.certFile, k.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d:%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

func (k *certificates) load(stamp string) error {
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	k.cur.Store(&cert)
	k.stamp = stamp
	if cert.Leaf != nil {
		k.m.tlsExpiry.Set(float64(cert.Leaf.NotAfter.Unix()))
	}
	return nil
}

// refresh reloads the certificate if its files changed. A pair that does
// not load (a rotation caught half-way, a bad file) keeps the old one in
// service; the next change tries again.
func (k *certificates) refresh() {
	stamp, err := k.fileStamp()
	if err != nil || stamp == k.stamp {
		return
	}
	if err := k.load(stamp); err != nil {
		k.stamp = stamp // once per change, not once a second
		k.m.tlsReloads.WithLabelValues("error").Inc()
		k.log.Warn().Err(err).Msg("TLS certificate not reloaded; the previous one stays in use")
		return
	}
	k.m.tlsReloads.WithLabelValues("ok").Inc()
	k.log.Info().Msg("TLS certificate reloaded")
}
