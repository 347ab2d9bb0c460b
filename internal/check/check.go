// Package check collects the problems of an options struct, so that a
// Validate method reports every bad value at once, in a fixed order, with the
// value and the rule it breaks.
package check

import (
	"errors"
	"fmt"
)

// Problem is one invalid option. Field is the Go field's path in the options
// struct ("Conn.Workers"): libraries do not know the flags a command maps to
// them, so a command translates Field for its users.
type Problem struct {
	Field string
	Value any
	Rule  string
}

func (p *Problem) Error() string { return fmt.Sprintf("%s %v: %s", p.Field, p.Value, p.Rule) }

// List gathers problems in the order they are found.
type List struct {
	prefix   string
	problems []error
}

// Prefixed returns a List whose fields are named under prefix ("Conn.").
func Prefixed(prefix string) *List { return &List{prefix: prefix} }

// Add records a problem when bad is true.
func (l *List) Add(bad bool, field string, value any, rule string) {
	if bad {
		l.problems = append(l.problems, &Problem{Field: l.prefix + field, Value: value, Rule: rule})
	}
}

// Merge appends the problems of a nested Validate, naming its fields under
// prefix.
func (l *List) Merge(prefix string, err error) {
	for _, e := range Problems(err) {
		var p *Problem
		if errors.As(e, &p) {
			e = &Problem{Field: l.prefix + prefix + p.Field, Value: p.Value, Rule: p.Rule}
		}
		l.problems = append(l.problems, e)
	}
}

// Err returns the problems joined, or nil.
func (l *List) Err() error { return errors.Join(l.problems...) }

// Problems splits an error from Err back into its problems.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
