package flagenv

import (
	"flag"
	"io"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantAddr  string
		wantJoin  string
		wantError bool
	}{
		{"default", nil, nil, "127.0.0.1:1", "", false},
		{"env", nil, map[string]string{"RINGCAST_ADDR": "127.0.0.1:2", "RINGCAST_JOIN": "a:1, b:2"}, "127.0.0.1:2", "a:1,b:2", false},
		{"flag wins", []string{"-addr", "127.0.0.1:3"}, map[string]string{"RINGCAST_ADDR": "127.0.0.1:2"}, "127.0.0.1:3", "", false},
		{"bad env value", nil, map[string]string{"RINGCAST_N": "x"}, "", "", true},
		{"stray argument", []string{"extra"}, nil, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			addr := fs.String("addr", "127.0.0.1:1", "")
			fs.Int("n", 0, "")
			var join List
			fs.Var(&join, "join", "")
			err := Parse(fs, tt.args, func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantError {
				t.Fatalf("Parse error = %v, want error %v", err, tt.wantError)
			}
			if err != nil {
				return
			}
			if *addr != tt.wantAddr || join.String() != tt.wantJoin {
				t.Errorf("addr, join = %q, %q, want %q, %q", *addr, join.String(), tt.wantAddr, tt.wantJoin)
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("history-size"); got != "RINGCAST_HISTORY_SIZE" {
		t.Errorf("EnvName(history-size) = %q, want RINGCAST_HISTORY_SIZE", got)
	}
}
