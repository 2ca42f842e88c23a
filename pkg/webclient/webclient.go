// Package webclient serves ringcast's browser side: the JavaScript client
// module (client.js), its TypeScript declarations and the demo page.
package webclient

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed index.html client.js client.d.ts
var files embed.FS

type asset struct {
	name        string
	contentType string
	etag        string
	body        []byte
}

// routes maps each served path to its embedded file.
var routes = map[string]struct{ file, contentType string }{
	"/":            {"index.html", "text/html; charset=utf-8"},
	"/client.js":   {"client.js", "text/javascript; charset=utf-8"},
	"/client.d.ts": {"client.d.ts", "application/typescript; charset=utf-8"},
}

// Handler serves GET and HEAD for /, /client.js and /client.d.ts, with
// Cache-Control: no-cache and an ETag (conditional requests get 304). Other
// paths get 404, other methods 405.
func Handler() http.Handler {
	assets := make(map[string]asset, len(routes))
	for path, r := range routes {
		b, err := files.ReadFile(r.file)
		if err != nil {
			panic("webclient: embedded file missing: " + r.file) // the build embeds every file
		}
		sum := sha256.Sum256(b)
		assets[path] = asset{name: r.file, contentType: r.contentType, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, body: b}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := assets[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.body))
	})
}
