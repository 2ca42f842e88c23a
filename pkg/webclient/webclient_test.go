package webclient

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		method, path string
		status       int
		contentType  string
		body         string // a substring the body must hold
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", "import { RingcastClient } from '/client.js'"},
		{"GET", "/client.js", 200, "text/javascript; charset=utf-8", "export class RingcastClient"},
		{"GET", "/client.d.ts", 200, "application/typescript; charset=utf-8", "export class RingcastClient"},
		{"HEAD", "/client.js", 200, "text/javascript; charset=utf-8", ""},
		{"GET", "/index.html", 404, "", ""},
		{"GET", "/client.js/x", 404, "", ""},
		{"GET", "/webclient.go", 404, "", ""},
		{"POST", "/client.js", 405, "", ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
			continue
		}
		if tc.status != 200 {
			continue
		}
		if got := rec.Header().Get("Content-Type"); got != tc.contentType {
			t.Errorf("%s %s: Content-Type %q, want %q", tc.method, tc.path, got, tc.contentType)
		}
		if got := rec.Header().Get("Cache-Control"); got != "no-cache" {
			t.Errorf("%s %s: Cache-Control %q, want no-cache", tc.method, tc.path, got)
		}
		if rec.Header().Get("ETag") == "" {
			t.Errorf("%s %s: no ETag", tc.method, tc.path)
		}
		if !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%s %s: body does not contain %q", tc.method, tc.path, tc.body)
		}
	}
}

func TestHandlerETag(t *testing.T) {
	h := Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/client.js", nil))
	etag := rec.Header().Get("ETag")

	req := httptest.NewRequest("GET", "/client.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Errorf("GET /client.js with If-None-Match %s: status %d, want 304", etag, rec.Code)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if other := rec.Header().Get("ETag"); other == etag {
		t.Errorf("/ and /client.js share ETag %s", etag)
	}
}
