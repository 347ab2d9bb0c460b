package cluster

import (
	"encoding/binary"
	"errors"
)

// Messages between nodes. A message is one batch, sent with memberlist's
// SendReliable (TCP, encrypted and authenticated with the cluster key):
//
//	version  1 byte, wireVersion
//	sender   uvarint length, then the sending node's name
//	records  to the end of the message; each is a kind (1 byte), a uvarint
//	         length and that many bytes of body
//
// The length lets a node skip kinds it does not know, so that a kind can be
// added without breaking older nodes during a rolling upgrade. Version 1 was
// the unbatched text message of earlier builds; it is not accepted.
//
// Each message travels on a connection of its own and the receiver handles
// them concurrently, so two batches may be handled out of order; and a
// batch whose send failed is sent again, so it may arrive twice. A record
// must make sense alone and be idempotent (a takeover carries its login
// time, and closing what is older twice is closing it once).
const wireVersion byte = 2

// kind is a record's type. Only append: the values are on the wire.
type kind byte

const (
	// kindTakeover: a device logged in on the sender. Body: the login time,
	// unix nanoseconds, 8 bytes big-endian; then the device id.
	kindTakeover kind = 1
)

func (k kind) String() string {
	switch k {
	case kindTakeover:
		return "takeover"
	}
	return "unknown"
}

const (
	// maxRecordBytes bounds one record. Device ids are issued by the store
	// and far shorter; the bound keeps a batch's record count sane.
	maxRecordBytes = 1 << 10
	// maxNameBytes bounds the sender's name in a header.
	maxNameBytes = 255
)

var errMalformed = errors.New("cluster: malformed message")

// appendHeader starts a batch from sender.
func appendHeader(b []byte, sender string) []byte {
	b = append(b, wireVersion)
	b = binary.AppendUvarint(b, uint64(len(sender)))
	return append(b, sender...)
}

// appendTakeover appends a takeover record.
func appendTakeover(b []byte, device string, loggedInAt int64) []byte {
	b = append(b, byte(kindTakeover))
	b = binary.AppendUvarint(b, uint64(8+len(device)))
	b = binary.BigEndian.AppendUint64(b, uint64(loggedInAt))
	return append(b, device...)
}

// splitHeader returns a batch's sender and its records.
func splitHeader(msg []byte) (sender string, records []byte, err error) {
	if len(msg) < 2 || msg[0] != wireVersion {
		return "", nil, errMalformed
	}
	n, w := binary.Uvarint(msg[1:])
	if w <= 0 || n == 0 || n > maxNameBytes || n > uint64(len(msg)-1-w) {
		return "", nil, errMalformed
	}
	start := 1 + w
	return string(msg[start : start+int(n)]), msg[start+int(n):], nil
}

// nextRecord splits the first record off records.
func nextRecord(records []byte) (k kind, body, rest []byte, err error) {
	if len(records) < 2 {
		return 0, nil, nil, errMalformed
	}
	n, w := binary.Uvarint(records[1:])
	if w <= 0 || n > uint64(len(records)-1-w) {
		return 0, nil, nil, errMalformed
	}
	start := 1 + w
	end := start + int(n)
	return kind(records[0]), records[start:end], records[end:], nil
}

// parseTakeover reads a takeover record's body.
func parseTakeover(body []byte) (device string, loggedInAt int64, err error) {
	if len(body) <= 8 {
		return "", 0, errMalformed
	}
	return string(body[8:]), int64(binary.BigEndian.Uint64(body)), nil
}
