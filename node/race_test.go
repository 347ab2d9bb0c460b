//go:build race

package node_test

// raceEnabled is set under the race detector, which makes logins many
// times slower: tests that connect thousands of clients use fewer.
const raceEnabled = true
