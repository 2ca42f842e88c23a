package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/wire"
)

// wireCodes returns every Code* constant declared in package wire, read
// from its source so that a code added there without a status fails here.
func wireCodes(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../wire/*.go")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if !strings.HasPrefix(n.Name, "Code") || i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						codes[n.Name] = strings.Trim(lit.Value, `"`)
					}
				}
			}
		}
	}
	if len(codes) < 10 {
		t.Fatalf("found %d Code constants in package wire, want at least 10", len(codes))
	}
	return codes
}

func TestEveryWireCodeHasAStatus(t *testing.T) {
	for name, code := range wireCodes(t) {
		if _, ok := statuses[code]; !ok {
			t.Errorf("wire.%s (%q) has no HTTP status in statuses", name, code)
		}
	}
	if len(statuses) != len(wireCodes(t)) {
		t.Errorf("statuses has %d codes, wire declares %d", len(statuses), len(wireCodes(t)))
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		code string
		want int
	}{
		{wire.CodeBadJSON, 400},
		{wire.CodeBadClientID, 400},
		{wire.CodeTooLarge, 413},
		{wire.CodeBridgeUnavailable, 503},
		{wire.CodeNoNodes, 503},
		{wire.CodeNotReady, 503},
		{wire.CodeNodeUnreachable, 502},
		{wire.CodeInternal, 500},
		{"no_such_code", 500},
	} {
		if got := Status(tc.code); got != tc.want {
			t.Errorf("Status(%q) = %d, want %d", tc.code, got, tc.want)
		}
	}
}

type errorBody struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func decodeAnswer(t *testing.T, rec *httptest.ResponseRecorder) errorBody {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var b errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return b
}

func TestWriteWireError(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		code, want string
	}{
		{wire.ValidateChannel("a b"), 400, wire.CodeBadChannel, "channel has byte"},
		{&wire.Error{Code: wire.CodeBridgeUnavailable, Message: "redis down"}, 503, wire.CodeBridgeUnavailable, "redis down"},
		{errors.New("boom"), 500, wire.CodeInternal, "boom"},
	} {
		rec := httptest.NewRecorder()
		WriteWireError(rec, tc.err)
		b := decodeAnswer(t, rec)
		if rec.Code != tc.status || b.OK || b.Code != tc.code || !strings.Contains(b.Message, tc.want) {
			t.Errorf("WriteWireError(%v) = %d %+v, want %d code %q message containing %q", tc.err, rec.Code, b, tc.status, tc.code, tc.want)
		}
	}
}

func TestDecodeBody(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"ok", `{"channel":"room"}`, 200, ""},
		{"too large", `{"channel":"` + strings.Repeat("x", 64) + `"}`, 413, wire.CodeTooLarge},
		{"bad json", `{"channel":`, 400, wire.CodeBadJSON},
		{"wrong type", `{"channel":1}`, 400, wire.CodeBadJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "/v1/publish", strings.NewReader(tc.body))
			var v struct {
				Channel string `json:"channel"`
			}
			body, ok := DecodeBody(rec, req, 32, &v)
			if tc.code == "" {
				if !ok || string(body) != tc.body || v.Channel != "room" {
					t.Fatalf("DecodeBody = %q, %v, channel %q; want the body, true, room", body, ok, v.Channel)
				}
				return
			}
			if ok {
				t.Fatalf("DecodeBody(%q) ok, want %s", tc.body, tc.code)
			}
			if b := decodeAnswer(t, rec); rec.Code != tc.status || b.Code != tc.code {
				t.Fatalf("DecodeBody(%q) answered %d %q, want %d %q", tc.body, rec.Code, b.Code, tc.status, tc.code)
			}
		})
	}
}

func TestHealthy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(ServeHealthz))
	defer up.Close()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		WriteError(w, wire.CodeInternal, "sick")
	}))
	defer sick.Close()
	hung := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hung)
	ctx := context.Background()
	c := &http.Client{}
	addr := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	for _, tc := range []struct {
		name, addr string
		want       bool
	}{
		{"up", addr(up), true},
		{"500", addr(sick), false},
		{"hung", addr(slow), false},
		{"no address", "", false},
	} {
		if got := Healthy(ctx, c, tc.addr, 200*time.Millisecond); got != tc.want {
			t.Errorf("Healthy(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestHealthcheck(t *testing.T) {
	ready := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready {
			WriteError(w, wire.CodeNotReady, "bridge unavailable")
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := Healthcheck(ctx, []string{srv.URL + "/readyz"}); err != nil {
		t.Errorf("Healthcheck(ready) = %v, want nil", err)
	}
	ready = false
	if err := Healthcheck(ctx, []string{srv.URL + "/readyz"}); err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "bridge unavailable") {
		t.Errorf("Healthcheck(not ready) = %v, want the 503 and its message", err)
	}
	srv.Close()
	for _, args := range [][]string{{srv.URL}, nil, {"a", "b"}, {"::bad"}} {
		if err := Healthcheck(ctx, args); err == nil {
			t.Errorf("Healthcheck(%q) = nil, want an error", args)
		}
	}
}
