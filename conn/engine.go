package conn

// Engine names, for Options.Engine.
const (
	EngineEpoll     = "epoll"
	EngineGoroutine = "goroutine"
)

// engine drives the sockets of a Server: it accepts, waits for input and
// for writability, and closes descriptors. Framing, queues, deadlines and
// close handling are shared by both engines (Conn), so the two differ only
// in what a connection costs while it waits.
type engine interface {
	// start begins accepting on s.ln, until s.ln is closed.
	start() error
	// register starts watching a new connection.
	register(c *Conn) error
	// writeBlocked is called, under c.mu, when the socket took less than
	// was queued; the engine calls c.onWritable once it can take more.
	writeBlocked(c *Conn)
	// writeShut is called, under c.mu, once c's state reaches writeShut
	// (FIN sent, or aborted): a read side waiting for that after a
	// half-close may tear the connection down.
	writeShut(c *Conn)
	// unregister stops watching c; the read side's owner calls it once,
	// maybe after stop.
	unregister(c *Conn)
	// closeFd closes c's descriptor.
	closeFd(c *Conn)
	// stopAccepting ends accepting and returns when no connection can be
	// attached any more; s.ln is closed right after (an engine that closed
	// it to end Accept gets a harmless second Close).
	stopAccepting()
	// stop ends the engine's goroutines once connections are closed.
	stop()
}
