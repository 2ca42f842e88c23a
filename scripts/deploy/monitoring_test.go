package deploy

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every metric the Grafana dashboard queries is one the code defines, and
// every panel queries the provisioned Prometheus data source.
func TestDashboardMetricsExist(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "scripts/deploy/monitoring/grafana/dashboards/ringcast.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard uid %q with %d panels, want a uid and panels", dash.UID, len(dash.Panels))
	}

	// Names the code registers: string literals in non-test Go files.
	literal := regexp.MustCompile(`"(ringcast_[a-z_]+)"`)
	defined := map[string]bool{}
	err = filepath.WalkDir(filepath.Join(root, "pkg"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		for _, m := range literal.FindAllSubmatch(src, -1) {
			defined[string(m[1])] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	used := regexp.MustCompile(`ringcast_[a-z_]+`)
	histogram := regexp.MustCompile(`_(bucket|count|sum)$`)
	for _, p := range dash.Panels {
		if p.Datasource.UID != "prometheus" {
			t.Errorf("panel %q uses data source %q, want the provisioned prometheus", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range used.FindAllString(tg.Expr, -1) {
				if !defined[name] && !defined[histogram.ReplaceAllString(name, "")] {
					t.Errorf("panel %q queries %s, which no package defines", p.Title, name)
				}
			}
		}
	}
}
