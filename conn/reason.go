package conn

import (
	"errors"
	"fmt"

	"github.com/gobwas/ws"
)

// CloseReason says why a connection was closed. It labels logs and metrics
// and picks the WebSocket close code. Only append: values are metric labels.
type CloseReason uint32

const (
	ReasonNone          CloseReason = iota
	ReasonClientClosed              // the peer closed or reset the connection
	ReasonProtocolError             // the peer broke the framing or protocol rules
	ReasonSlowConsumer              // the outgoing queue overflowed: the peer does not read
	ReasonTimeout                   // a handshake or message was not finished in time
	ReasonShutdown                  // the server is stopping
	ReasonTakeover                  // the same device logged in on another connection
	ReasonIOError                   // a socket error other than a clean close
	ReasonPolicy                    // the server decided to close it (rebalance, feed loss, limits)
	ReasonHTTPRejected              // a plain HTTP request that was not a WebSocket upgrade
	ReasonResync                    // the feed lost changes of the user: log in again to re-sync
	ReasonTLSError                  // the TLS handshake failed, or a record was bad
	ReasonTLSRequired               // a plain connection where TLS is required
	ReasonProxyProtocol             // no valid PROXY protocol header where one is required
	ReasonMemoryBudget              // a node-wide memory budget was full and this connection held the most
	reasonCount
)

var reasonNames = [reasonCount]string{
	"none", "client_closed", "protocol_error", "slow_consumer", "timeout",
	"shutdown", "takeover", "io_error", "policy", "http_rejected", "resync",
	"tls_error", "tls_required", "proxy_protocol", "memory_budget",
}

func (r CloseReason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

// wsStatus is the WebSocket close code sent for a server-initiated close.
func (r CloseReason) wsStatus() ws.StatusCode {
	switch r {
	case ReasonShutdown:
		return ws.StatusGoingAway
	case ReasonProtocolError:
		return ws.StatusProtocolError
	case ReasonTakeover, ReasonPolicy, ReasonTimeout, ReasonResync:
		return ws.StatusPolicyViolation
	case ReasonMemoryBudget:
		return statusTryAgainLater
	default:
		return ws.StatusNormalClosure
	}
}

// statusTryAgainLater is 1013 (IANA's registry; gobwas/ws has no name for
// it): the server is overloaded, the client may come back.
const statusTryAgainLater ws.StatusCode = 1013

// Framing errors reported to Handler.OnFramingError. Their text is safe to
// show to the client.
var (
	ErrInvalidJSON = errors.New("invalid JSON")
	// ErrNotObject: the stream holds a JSON scalar (a number, string, true,
	// false or null) where a request belongs. It is valid JSON, but a raw
	// stream cannot say where a number ends, so it closes like invalid JSON.
	ErrNotObject         = errors.New("request must be a JSON object")
	ErrIncompleteTimeout = errors.New("incomplete message: timed out waiting for the rest")
	ErrInvalidUTF8       = errors.New("invalid UTF-8 in text message")
	ErrLoginTimeout      = errors.New("not logged in in time")
)

// TooBigError reports a message larger than the configured limit.
type TooBigError struct{ Limit int }

func (e *TooBigError) Error() string { return fmt.Sprintf("message exceeds %d bytes", e.Limit) }
