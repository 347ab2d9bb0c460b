package node

import "github.com/kronos-sync/kronos-server/conn"

// SharedAnswerOf is the read-all answer of the user that the node holds
// (weakly) for sharing, or nil.
func SharedAnswerOf(n *Node, userID string) *conn.Shared {
	n.answers.mu.Lock()
	defer n.answers.mu.Unlock()
	return n.answers.m[userID].p.Value()
}

// SharedAnswers is the number of users with a shared answer entry.
func SharedAnswers(n *Node) int { return n.answers.len() }

// ReadAllsWaiting is how many read-alls of the user wait for the read after
// the running one.
func ReadAllsWaiting(n *Node, userID string) int { return n.reads.waiting(userID) }
