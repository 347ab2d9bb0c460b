package feed

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrorCode classifies a refused request. Only append.
type ErrorCode uint8

const (
	CodeUserNotFound ErrorCode = iota + 1
	CodeDeviceNotFound
	CodeDeviceTaken
	CodeTaskNotFound
	CodeTaskExists
	CodeStaleVersion
	CodeTooManyTasks
	CodeTooManyDevices
	CodeInvalidTask
)

// Error is a request the store refused. Its message is safe to send to the
// client: it never holds a user id.
type Error struct {
	Code ErrorCode
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// IsRefusal reports whether err is a refusal (*Error): the request was
// wrong, not the store.
func IsRefusal(err error) bool {
	var fe *Error
	return errors.As(err, &fe)
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code ErrorCode) bool {
	var fe *Error
	return errors.As(err, &fe) && fe.Code == code
}

// ErrUserNotFound refuses a login or request of an unknown user.
func ErrUserNotFound() error {
	return &Error{CodeUserNotFound, "unknown user_id"}
}

// ErrDeviceNotFound refuses a device id the user has not registered.
func ErrDeviceNotFound(device string) error {
	return &Error{CodeDeviceNotFound, fmt.Sprintf("device %q is not registered for this user", device)}
}

// ErrDeviceTaken refuses a device id another user owns.
func ErrDeviceTaken(device string) error {
	return &Error{CodeDeviceTaken, fmt.Sprintf("device %q belongs to another user", device)}
}

func errTaskNotFound(id int64) error {
	return &Error{CodeTaskNotFound, "task " + strconv.FormatInt(id, 10) + " not found"}
}

func errTaskIndexNotFound(index string) error {
	return &Error{CodeTaskNotFound, fmt.Sprintf("task with index %q not found", index)}
}

func errTaskExists(id int64) error {
	return &Error{CodeTaskExists, "task " + strconv.FormatInt(id, 10) + " already exists"}
}

func errStaleVersion(sent, stored []byte) error {
	return &Error{CodeStaleVersion, fmt.Sprintf(
		"version %s is older than the stored version %s: read-all first", sent, stored)}
}

func errTooManyTasks(limit int) error {
	return &Error{CodeTooManyTasks, fmt.Sprintf("too many tasks: at most %d per user", limit)}
}

// ErrTooManyDevices refuses a device past the per-user limit.
func ErrTooManyDevices(limit int) error {
	return &Error{CodeTooManyDevices, fmt.Sprintf("too many devices: at most %d per user", limit)}
}

func errInvalidTask(format string, args ...any) error {
	return &Error{CodeInvalidTask, fmt.Sprintf(format, args...)}
}

// ErrConfig marks an error in a store's configuration (its URL or
// options): retrying cannot help.
var ErrConfig = errors.New("bad store configuration")
