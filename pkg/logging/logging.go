// Package logging builds the zap loggers ringcast processes use and adapts
// libraries that log through a standard *log.Logger (memberlist) to zap.
package logging

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

var levels = map[string]zapcore.Level{
	"debug": zapcore.DebugLevel,
	"info":  zapcore.InfoLevel,
	"warn":  zapcore.WarnLevel,
	"error": zapcore.ErrorLevel,
}

// New returns a logger writing to stderr. format is "dev" (readable console
// lines, no colour) or "json"; level is debug, info, warn or error.
func New(format, level string) (*zap.Logger, error) {
	core, err := newCore(format, level, zapcore.Lock(os.Stderr))
	if err != nil {
		return nil, err
	}
	return zap.New(core, zap.AddCaller(), zap.ErrorOutput(zapcore.Lock(os.Stderr))), nil
}

func newCore(format, level string, out zapcore.WriteSyncer) (zapcore.Core, error) {
	lvl, ok := levels[level]
	if !ok {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	var enc zapcore.Encoder
	switch format {
	case "dev":
		cfg := zap.NewDevelopmentEncoderConfig() // ISO8601 time, capital level, no colour
		enc = zapcore.NewConsoleEncoder(cfg)
	case "json":
		cfg := zap.NewProductionEncoderConfig()
		cfg.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(cfg)
	default:
		return nil, fmt.Errorf("log format %q: want dev or json", format)
	}
	return zapcore.NewCore(enc, out, lvl), nil
}

// Flags registers -log and -log-level on fs and returns the constructor of
// the logger they select, to call after parsing.
func Flags(fs *flag.FlagSet) func() (*zap.Logger, error) {
	format := fs.String("log", "dev", "log format: dev | json")
	level := fs.String("log-level", "info", "log level: debug | info | warn | error")
	return func() (*zap.Logger, error) { return New(*format, *level) }
}

// StdLogger returns a *log.Logger whose lines go to l. A leading level tag
// as memberlist writes it ([DEBUG], [INFO], [WARN], [ERR], [ERROR]) sets the
// zap level and is stripped; untagged lines log at info. Each line becomes
// the message "log" with its text in the field "text"; the caller recorded
// is the code that called the *log.Logger.
func StdLogger(l *zap.Logger, watch ...func(text []byte)) *log.Logger {
	// Skip stdWriter.Write, log.(*Logger).output and the log.(*Logger) print method.
	return log.New(stdWriter{l.WithOptions(zap.AddCallerSkip(3)), watch}, "", 0)
}

// stdWriter logs each line at the level of its tag; watch sees each line's
// text (without the tag) first, for events a library only logs.
type stdWriter struct {
	log   *zap.Logger
	watch []func(text []byte)
}

var tags = []struct {
	tag   []byte
	level zapcore.Level
}{
	{[]byte("[DEBUG]"), zapcore.DebugLevel},
	{[]byte("[INFO]"), zapcore.InfoLevel},
	{[]byte("[WARN]"), zapcore.WarnLevel},
	{[]byte("[ERR]"), zapcore.ErrorLevel},
	{[]byte("[ERROR]"), zapcore.ErrorLevel},
}

func (w stdWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	lvl := zapcore.InfoLevel
	for _, t := range tags {
		if rest, ok := bytes.CutPrefix(line, t.tag); ok {
			lvl, line = t.level, bytes.TrimSpace(rest)
			break
		}
	}
	for _, f := range w.watch {
		f(line)
	}
	if ce := w.log.Check(lvl, "log"); ce != nil {
		ce.Write(zap.ByteString("text", line))
	}
	return len(p), nil
}
