package wire

// MaxNameLen bounds client ids and channel names, in bytes.
const MaxNameLen = 128

func validName(s, what string) error {
	if len(s) == 0 {
		return errorf(CodeBadRequest, "%s is empty", what)
	}
	if len(s) > MaxNameLen {
		return errorf(CodeBadRequest, "%s is %d bytes, the limit is %d", what, len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return errorf(CodeBadRequest, "%s has byte 0x%02x at %d: allowed are A-Z a-z 0-9 _ . : @ -", what, s[i], i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c == '_', c == '.', c == ':', c == '@', c == '-':
		return true
	}
	return false
}

// ValidateClientID reports whether id is a valid client id: 1–128 bytes of
// [A-Za-z0-9_.:@-]. The error is a *Error with code bad_client_id.
func ValidateClientID(id string) error {
	if err := validName(id, "client_id"); err != nil {
		err.(*Error).Code = CodeBadClientID
		return err
	}
	return nil
}

// ValidateChannel reports whether name is a valid channel name. The error is
// a *Error with code bad_channel.
func ValidateChannel(name string) error {
	if err := validName(name, "channel"); err != nil {
		err.(*Error).Code = CodeBadChannel
		return err
	}
	return nil
}

// MaxSessionLen bounds the session query parameter, in bytes.
const MaxSessionLen = 64

// ValidateSession reports whether s is a valid session: 1–64 bytes of the
// client id characters. The error is a *Error with code bad_request.
func ValidateSession(s string) error {
	if len(s) > MaxSessionLen {
		return errorf(CodeBadRequest, "session is %d bytes, the limit is %d", len(s), MaxSessionLen)
	}
	return validName(s, "session")
}
