package node

import (
	"encoding/json"
	"strconv"

	"github.com/kronos-sync/kronos-server/feed"
)

// The encoders below write the server's messages by hand: each is a fixed
// shape around values that are already JSON (tasks and versions are kept
// verbatim), and a notification is encoded once for all devices of a user.

// appendString appends s as a JSON string. Ids and most texts are plain
// printable ASCII, quoted as they are without an allocation; anything else
// takes encoding/json's escaping (which also escapes <, > and &).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // never fails for a string
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendRaw(b []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(b, "null"...)
	}
	return append(b, raw...)
}

func encodeLogin(s feed.Session) []byte {
	b := make([]byte, 0, 160)
	b = append(b, `{"success":true,"type":"login","user_id":`...)
	b = appendString(b, s.UserID)
	b = append(b, `,"device_id":`...)
	b = appendString(b, s.DeviceID)
	b = append(b, `,"version":`...)
	b = appendRaw(b, s.Version)
	return append(b, '}')
}

// readAllSize is about the size of snap's answer (a little more).
func readAllSize(snap feed.Snapshot) int {
	size := 64 + len(snap.Version)
	for _, t := range snap.Tasks {
		size += len(t) + 1
	}
	return size
}

func encodeReadAll(snap feed.Snapshot) []byte {
	b := make([]byte, 0, readAllSize(snap))
	b = append(b, `{"success":true,"type":"read-all","tasks":[`...)
	for i, t := range snap.Tasks {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, t...)
	}
	b = append(b, `],"version":`...)
	b = appendRaw(b, snap.Version)
	return append(b, '}')
}

// encodeNotification is the message every device of the user receives for
// one committed change.
func encodeNotification(c *feed.Change) []byte {
	b := make([]byte, 0, 96+len(c.Task)+len(c.DeviceID)+len(c.Version))
	b = append(b, `{"success":true,"type":"`...)
	b = append(b, c.Kind.String()...)
	if c.Kind == feed.ChangeDelete {
		b = append(b, `","task_id":`...)
		b = strconv.AppendInt(b, c.TaskID, 10)
	} else {
		b = append(b, `","task":`...)
		b = append(b, c.Task...)
	}
	b = append(b, `,"device_id":`...)
	b = appendString(b, c.DeviceID)
	b = append(b, `,"version":`...)
	b = appendRaw(b, c.Version)
	return append(b, '}')
}

// encodeError is {"success":false,"type":T,"error":MSG}; type is left out
// when the request did not name one.
func encodeError(reqType, msg string) []byte {
	b := make([]byte, 0, 48+len(reqType)+len(msg))
	b = append(b, `{"success":false`...)
	if reqType != "" {
		b = append(b, `,"type":`...)
		b = appendString(b, reqType)
	}
	b = append(b, `,"error":`...)
	b = appendString(b, msg)
	return append(b, '}')
}
