package conn

import (
	"bytes"
	"io"
	"strconv"

	"github.com/gobwas/ws"
)

func httpResponse(status, body string, extra string) []byte {
	return []byte("HTTP/1.1 " + status + "\r\n" + extra +
		"Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

var (
	httpUpgradeRequired = httpResponse("426 Upgrade Required",
		"Kronos: open a WebSocket on this port, or send JSON over raw TCP.\n",
		"Upgrade: websocket\r\n")
	httpHeadTooLarge = httpResponse("431 Request Header Fields Too Large",
		"request head too large\n", "")
)

// upgrade answers a complete HTTP request head. A WebSocket upgrade is done
// with gobwas/ws on the bytes already read, with no http.Server and no
// goroutine; any other request is refused with an HTTP error and closed.
// It reports whether the connection is now a WebSocket.
func (c *Conn) upgrade(head []byte) bool {
	if !bytes.HasPrefix(head, []byte("GET ")) || !wantsWebSocket(head) {
		c.rejectHTTP(httpUpgradeRequired)
		return false
	}
	var answer bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(head), &answer}
	_, err := c.srv.upgrader.Upgrade(rw)
	if err != nil {
		c.rejectHTTP(answer.Bytes()) // gobwas wrote the HTTP error answer
		return false
	}
	c.setTransport(TransportWebSocket)
	c.sendRaw(answer.Bytes())
	return true
}

// rejectHTTP answers a request that is not a WebSocket upgrade and closes.
func (c *Conn) rejectHTTP(answer []byte) {
	c.setTransport(transportHTTP)
	c.markClosing(ReasonHTTPRejected)
	c.discardIn = true
	c.closeAfterSend(answer)
}

// wantsWebSocket reports whether a request head has "Upgrade: websocket".
func wantsWebSocket(head []byte) bool {
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Upgrade")) &&
			bytes.Contains(bytes.ToLower(value), []byte("websocket")) {
			return true
		}
	}
	return false
}

func newUpgrader() ws.Upgrader {
	return ws.Upgrader{ReadBufferSize: maxHTTPHead, WriteBufferSize: 512}
}
