package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestNewRejectsUnknown(t *testing.T) {
	for _, tc := range []struct{ format, level string }{
		{"text", "info"}, {"", "info"}, {"json", "trace"}, {"dev", ""}, {"dev", "panic"},
	} {
		if _, err := New(tc.format, tc.level); err == nil {
			t.Errorf("New(%q, %q) error = nil, want error", tc.format, tc.level)
		}
	}
}

func TestNewFormats(t *testing.T) {
	for _, tc := range []struct {
		format string
		check  func(line string) bool
	}{
		{"dev", func(l string) bool { return strings.Contains(l, "\tWARN\t") && strings.Contains(l, `{"k": 1}`) }},
		{"json", func(l string) bool {
			var m map[string]any
			return json.Unmarshal([]byte(l), &m) == nil && m["level"] == "warn" && m["msg"] == "hello" && m["k"] == 1.0
		}},
	} {
		var buf bytes.Buffer
		core, err := newCore(tc.format, "warn", zapcore.AddSync(&buf))
		if err != nil {
			t.Fatalf("newCore(%q) error = %v", tc.format, err)
		}
		l := zap.New(core)
		l.Info("dropped")
		l.Warn("hello", zap.Int("k", 1))
		if out := buf.String(); strings.Contains(out, "dropped") || strings.Contains(out, "\x1b[") || !tc.check(strings.TrimSpace(out)) {
			t.Errorf("format %q wrote %q", tc.format, out)
		}
	}
}

func TestStdLogger(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	std := StdLogger(zap.New(core))
	for _, tc := range []struct {
		line  string
		level zapcore.Level
		text  string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1", zapcore.DebugLevel, "memberlist: Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Marking n2 as failed", zapcore.InfoLevel, "memberlist: Marking n2 as failed"},
		{"[WARN] memberlist: Refuting a suspect message", zapcore.WarnLevel, "memberlist: Refuting a suspect message"},
		{"[ERR] memberlist: Failed to send ping", zapcore.ErrorLevel, "memberlist: Failed to send ping"},
		{"[ERROR] boom", zapcore.ErrorLevel, "boom"},
		{"http: TLS handshake error", zapcore.InfoLevel, "http: TLS handshake error"},
	} {
		std.Print(tc.line)
		all := logs.TakeAll()
		if len(all) != 1 {
			t.Fatalf("Print(%q) logged %d entries, want 1", tc.line, len(all))
		}
		e := all[0]
		if e.Level != tc.level || e.Message != "log" || e.ContextMap()["text"] != tc.text {
			t.Errorf("Print(%q) = %v %q %v, want %v \"log\" text=%q", tc.line, e.Level, e.Message, e.ContextMap(), tc.level, tc.text)
		}
	}
}

func TestStdLoggerCaller(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	StdLogger(zap.New(core, zap.AddCaller())).Printf("[INFO] x")
	if all := logs.TakeAll(); len(all) != 1 || !strings.HasSuffix(all[0].Caller.File, "logging_test.go") {
		t.Errorf("caller = %+v, want logging_test.go", all)
	}
}

func TestStdLoggerLevelFilter(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	StdLogger(zap.New(core)).Print("[DEBUG] memberlist: noise")
	if n := logs.Len(); n != 0 {
		t.Errorf("debug line at info level logged %d entries, want 0", n)
	}
}
