package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen+1)
	tests := []struct {
		in     string
		op     string // wanted Op on success
		code   string // wanted error code; "" = success
		wantID string // wanted ID, also on error
	}{
		{in: `{"op":"subscribe","channel":"room"}`, op: OpSubscribe},
		{in: `{"op":"subscribe","channel":"room","since":{"epoch":"e","offset":3}}`, op: OpSubscribe},
		{in: `{"op":"unsubscribe","channel":"room","id":7}`, op: OpUnsubscribe, wantID: `7`},
		{in: `{"op":"publish","channel":"room","data":{"a":1}}`, op: OpPublish},
		{in: `{"op":"publish","channel":"room","data":null}`, op: OpPublish},
		{in: `{"op":"send","to":"bob","data":"hi","id":"r1"}`, op: OpSend, wantID: `"r1"`},
		{in: `{"op":"ping"}`, op: OpPing},
		{in: `{"op":"ping","id":-1.5e3}`, op: OpPing, wantID: `-1.5e3`},
		{in: `{"op":"ping","id":null}`, op: OpPing, wantID: `null`},
		{in: ` {"op" : "ping" , "id" : "x"} `, op: OpPing, wantID: `"x"`},

		// Missing or bad fields keep the id for the error reply.
		{in: `{"op":"subscribe","id":1}`, code: CodeBadChannel, wantID: `1`},
		{in: `{"op":"subscribe","channel":"a b","id":1}`, code: CodeBadChannel, wantID: `1`},
		{in: `{"op":"subscribe","channel":"a/b"}`, code: CodeBadChannel},
		{in: `{"op":"subscribe","channel":"` + long + `"}`, code: CodeBadChannel},
		{in: `{"op":"unsubscribe"}`, code: CodeBadChannel},
		{in: `{"op":"publish","data":1}`, code: CodeBadChannel},
		{in: `{"op":"publish","channel":"room","id":"p"}`, code: CodeBadRequest, wantID: `"p"`},
		{in: `{"op":"send","data":1}`, code: CodeBadClientID},
		{in: `{"op":"send","to":"b\u00e9b","data":1}`, code: CodeBadClientID},
		{in: `{"op":"send","to":"bob"}`, code: CodeBadRequest},

		// Ids: string or number only.
		{in: `{"op":"ping","id":{}}`, code: CodeBadRequest},
		{in: `{"op":"ping","id":[1]}`, code: CodeBadRequest},
		{in: `{"op":"ping","id":true}`, code: CodeBadRequest},
		{in: `{"op":"ping","id":"` + strings.Repeat("x", 200) + `"}`, code: CodeBadRequest},

		// Ops.
		{in: `{"op":"fly","id":2}`, code: CodeUnknownOp, wantID: `2`},
		{in: `{"op":"welcome"}`, code: CodeUnknownOp},
		{in: `{"op":""}`, code: CodeBadRequest},
		{in: `{}`, code: CodeBadRequest},
		{in: `null`, code: CodeBadRequest},

		// Malformed JSON.
		{in: ``, code: CodeBadJSON},
		{in: `{`, code: CodeBadJSON},
		{in: `{"op":"ping"`, code: CodeBadJSON},
		{in: `[]`, code: CodeBadJSON},
		{in: `"ping"`, code: CodeBadJSON},
		{in: `{"op":"ping"} x`, code: CodeBadJSON},
		{in: `{"op":1}`, code: CodeBadJSON},
		{in: `{"op":"publish","channel":5,"data":1,"id":9}`, code: CodeBadJSON, wantID: `9`},
		{in: `{"op":"subscribe","channel":"c","since":{"offset":-1},"id":"s"}`, code: CodeBadJSON, wantID: `"s"`},
	}
	for _, tt := range tests {
		f, err := Decode([]byte(tt.in))
		if string(f.ID) != tt.wantID {
			t.Errorf("Decode(%q).ID = %s, want %s", tt.in, f.ID, tt.wantID)
		}
		if tt.code == "" {
			if err != nil {
				t.Errorf("Decode(%q) error = %v, want nil", tt.in, err)
			} else if f.Op != tt.op {
				t.Errorf("Decode(%q).Op = %q, want %q", tt.in, f.Op, tt.op)
			}
			continue
		}
		var we *Error
		if !errors.As(err, &we) {
			t.Errorf("Decode(%q) error = %v, want a *Error with code %s", tt.in, err, tt.code)
			continue
		}
		if we.Code != tt.code {
			t.Errorf("Decode(%q) code = %q (%s), want %q", tt.in, we.Code, we.Message, tt.code)
		}
	}
}

func TestDecodeFields(t *testing.T) {
	f, err := Decode([]byte(`{"op":"subscribe","channel":"c","since":{"epoch":"e1","offset":42},"id":"a"}`))
	if err != nil {
		t.Fatalf("Decode error = %v", err)
	}
	if f.Since == nil || *f.Since != (Position{Epoch: "e1", Offset: 42}) {
		t.Errorf("Since = %+v, want {e1 42}", f.Since)
	}
	f, err = Decode([]byte(`{"op":"publish","channel":"c","data":{"k":[1,2]}}`))
	if err != nil {
		t.Fatalf("Decode error = %v", err)
	}
	if string(f.Data) != `{"k":[1,2]}` {
		t.Errorf("Data = %s, want {\"k\":[1,2]}", f.Data)
	}
}

func TestValidateNames(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"", false},
		{"a", true},
		{strings.Repeat("z", 128), true},
		{strings.Repeat("z", 129), false},
		{"A-Za-z0-9_.:@-", true},
		{"_", true}, {".", true}, {":", true}, {"@", true}, {"-", true},
		{"user@example.com", true},
		{"a b", false},
		{"a/b", false},
		{"a\x00b", false},
		{"\x00", false},
		{"é", false},
		{"a\tb", false},
		{"a+b", false},
		{"a#b", false},
		{"a*", false},
		{"\xff", false},
	}
	for _, tt := range tests {
		for _, v := range []struct {
			name string
			fn   func(string) error
			code string
		}{
			{"ValidateClientID", ValidateClientID, CodeBadClientID},
			{"ValidateChannel", ValidateChannel, CodeBadChannel},
		} {
			err := v.fn(tt.in)
			if tt.ok {
				if err != nil {
					t.Errorf("%s(%q) = %v, want nil", v.name, tt.in, err)
				}
				continue
			}
			var we *Error
			if !errors.As(err, &we) || we.Code != v.code {
				t.Errorf("%s(%q) = %v, want a *Error with code %s", v.name, tt.in, err, v.code)
			}
		}
	}
}

func TestErrorFrame(t *testing.T) {
	tests := []struct {
		id   string
		err  error
		want string
	}{
		{`"q"`, &Error{Code: CodeBadChannel, Message: "m"}, `{"op":"error","id":"q","code":"bad_channel","message":"m"}`},
		{``, errors.New("boom"), `{"op":"error","code":"internal","message":"boom"}`},
	}
	for _, tt := range tests {
		var id json.RawMessage
		if tt.id != "" {
			id = json.RawMessage(tt.id)
		}
		if got := string(ErrorFrame(id, tt.err)); got != tt.want {
			t.Errorf("ErrorFrame(%s, %v) = %s, want %s", tt.id, tt.err, got, tt.want)
		}
	}
}

func TestEncodeInvalidData(t *testing.T) {
	got := Encode(&Frame{Op: OpMessage, Data: json.RawMessage(`{`)})
	f := Frame{}
	if err := json.Unmarshal(got, &f); err != nil || f.Op != OpError || f.Code != CodeInternal {
		t.Errorf("Encode(invalid data) = %s, want an internal error frame", got)
	}
}

var snakeCase = regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","channel":"room","since":{"epoch":"e","offset":3},"id":1}`,
		`{"op":"publish","channel":"room","data":{"a":[1,"<&>"]},"id":"x"}`,
		`{"op":"send","to":"bob","data":"hi"}`,
		`{"op":"ping","id":null}`,
		`{"op":"unsubscribe","channel":"a:b"}`,
		`{"op":"welcome","client_id":"a","ring_epoch":3,"heartbeat_ms":10,"after_ms":0,"recovered":false}`,
		`{"OP":"ping","Op":"x"}`,
		`{"op":"ping","id":"\ud800"}`,
		`[]`, `{`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		if err != nil {
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("Decode(%q) error = %T %v, want *Error", b, err, err)
			}
			if !snakeCase.MatchString(we.Code) {
				t.Fatalf("Decode(%q) code = %q, want snake_case", b, we.Code)
			}
			if len(fr.ID) > 0 && validID(fr.ID) != nil {
				t.Fatalf("Decode(%q) returned invalid ID %s with the error", b, fr.ID)
			}
			ErrorFrame(fr.ID, err) // must not panic
			return
		}
		b2 := Encode(&fr)
		fr2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %s error %v, want nil", b, b2, err)
		}
		if fr2.Op != fr.Op || fr2.Channel != fr.Channel || fr2.To != fr.To {
			t.Fatalf("round trip of %q: %+v, want %+v", b, fr2, fr)
		}
		if b3 := Encode(&fr2); !bytes.Equal(b2, b3) {
			t.Fatalf("round trip of %q not stable:\n%s\n%s", b, b2, b3)
		}
	})
}

var nameRef = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,128}$`)

func FuzzValidateClientID(f *testing.F) {
	for _, s := range []string{"", "a", "a b", "user@x.io", "\x00", "é", strings.Repeat("a", 128), strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := nameRef.MatchString(s)
		err := ValidateClientID(s)
		if got := err == nil; got != want {
			t.Fatalf("ValidateClientID(%q) = %v, want ok=%v", s, err, want)
		}
		var we *Error
		if err != nil && (!errors.As(err, &we) || we.Code != CodeBadClientID) {
			t.Fatalf("ValidateClientID(%q) = %v, want code %s", s, err, CodeBadClientID)
		}
		if got := ValidateChannel(s) == nil; got != want {
			t.Fatalf("ValidateChannel(%q) ok = %v, want %v", s, got, want)
		}
	})
}
