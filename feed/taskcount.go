package feed

// TaskCounter keeps a user's task count through a write from what the
// write's reads saw: Apply always reads a task before it puts or deletes it,
// so whether a put adds a task is known without another query. A backend's
// UserTx embeds it, calls Seen from Get and All, and Added and Removed from
// Put and Delete.
type TaskCounter struct {
	Count int
	known map[int64]bool // whether each id read so far exists
}

// NewTaskCounter starts from the user's stored count.
func NewTaskCounter(n int) TaskCounter { return TaskCounter{Count: n, known: map[int64]bool{}} }

// TaskCount implements UserTx.
func (c *TaskCounter) TaskCount() int { return c.Count }

// Seen records whether a task that was read exists.
func (c *TaskCounter) Seen(id int64, exists bool) { c.known[id] = exists }

// Added counts a put.
func (c *TaskCounter) Added(id int64) {
	if !c.known[id] {
		c.Count++
		c.known[id] = true
	}
}

// Removed counts a delete.
func (c *TaskCounter) Removed(id int64) {
	if c.known[id] {
		c.Count--
		c.known[id] = false
	}
}
