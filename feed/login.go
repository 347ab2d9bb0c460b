package feed

import "github.com/google/uuid"

// newID makes a user or device id: a UUIDv4, 122 bits from crypto/rand.
func newID() string { return uuid.NewString() }

// deviceOwner is what a backend found about a requested device id.
type deviceOwner struct {
	found  bool
	userID string
}

// resolveDevice applies the login rules for the device of a login that
// creates something: no device id registers a new one; a new user may bring
// its own id if nobody has it; otherwise the device must be the user's. It
// returns the device id and whether it must be registered.
func resolveDevice(sess *Session, requested string, owner deviceOwner) error {
	switch {
	case requested == "":
		sess.DeviceID, sess.NewDevice = newID(), true
	case !owner.found && sess.NewUser:
		sess.DeviceID, sess.NewDevice = requested, true
	case !owner.found:
		return errDeviceNotFound(requested)
	case owner.userID != sess.UserID:
		return errDeviceTaken(requested)
	default:
		sess.DeviceID = requested
	}
	return nil
}
