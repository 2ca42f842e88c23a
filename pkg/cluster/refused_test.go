package cluster

import (
	"errors"
	"testing"
)

func TestRefused(t *testing.T) {
	for _, tt := range []struct {
		err  string
		want bool
	}{
		{"1 error occurred:\n\t* failed to join 127.0.0.1:1: no installed keys could decrypt the message", true},
		{"failed to join 127.0.0.1:1: remote state is encrypted and encryption is not configured", true},
		{"failed to join 127.0.0.1:1: encryption is configured but remote state is not encrypted", true},
		{"failed to join 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused", false},
		{"failed to join 127.0.0.1:1: read tcp: i/o timeout", false},
		{"failed to join 127.0.0.1:1: EOF", false},
	} {
		if got := refused(errors.New(tt.err)); got != tt.want {
			t.Errorf("refused(%q) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
