package feed

import "github.com/google/uuid"

// NewID makes a user or device id: a UUIDv4, 122 bits from crypto/rand.
func NewID() string { return uuid.NewString() }

// DeviceOwner is what a backend found about a requested device id.
type DeviceOwner struct {
	Found  bool
	UserID string
}

// ResolveDevice applies the login rules for the device of a login that
// creates something: no device id registers a new one; a new user may bring
// its own id if nobody has it; otherwise the device must be the user's. It
// returns the device id and whether it must be registered.
func ResolveDevice(sess *Session, requested string, owner DeviceOwner) error {
	switch {
	case requested == "":
		sess.DeviceID, sess.NewDevice = NewID(), true
	case !owner.Found && sess.NewUser:
		sess.DeviceID, sess.NewDevice = requested, true
	case !owner.Found:
		return ErrDeviceNotFound(requested)
	case owner.UserID != sess.UserID:
		return ErrDeviceTaken(requested)
	default:
		sess.DeviceID = requested
	}
	return nil
}
