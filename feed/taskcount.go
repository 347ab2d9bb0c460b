package feed

// taskCount keeps a user's task count through a write from what the
// write's reads saw: apply always reads a task before it puts or deletes
// it, so whether a put adds a task is known without another query.
type taskCount struct {
	count int
	known map[int64]bool // whether each id read so far exists
}

func newTaskCount(n int) taskCount { return taskCount{count: n, known: map[int64]bool{}} }

func (c *taskCount) TaskCount() int { return c.count }

func (c *taskCount) seen(id int64, exists bool) { c.known[id] = exists }

func (c *taskCount) put(id int64) {
	if !c.known[id] {
		c.count++
		c.known[id] = true
	}
}

func (c *taskCount) del(id int64) {
	if c.known[id] {
		c.count--
		c.known[id] = false
	}
}
