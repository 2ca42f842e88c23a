package topology

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestPartitionTags(t *testing.T) {
	for _, n := range []int{1, 3, 12, 64, 1024} {
		tags := PartitionTags(n)
		seen := map[string]bool{}
		for i, tag := range tags {
			s := int(Slot(strings.Trim(tag, "{}")))
			if s*n/16384 != i || seen[tag] {
				t.Errorf("PartitionTags(%d)[%d] = %s in slot %d, want a new tag in [%d, %d)", n, i, tag, s, i*16384/n, (i+1)*16384/n)
			}
			seen[tag] = true
		}
	}
	// Redis Cluster's reference values (CLUSTER KEYSLOT).
	for key, want := range map[string]uint16{"123456789": 12739, "foo": 12182, "": 0} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url     string
		wantErr bool
		check   func(*Server) string
	}{
		{"redis://127.0.0.1:6379/2", false, func(s *Server) string {
			if s.Single == nil || s.Single.Addr != "127.0.0.1:6379" || s.Single.DB != 2 {
				return "want one server 127.0.0.1:6379 db 2"
			}
			return ""
		}},
		{"redis+cluster://a:1,b:2?partitions=16", false, func(s *Server) string {
			if s.Cluster == nil || fmt.Sprint(s.Cluster.Addrs) != "[a:1 b:2]" || s.Partitions != 16 || s.Cluster.MaxRetries != -1 {
				return "want cluster seeds a:1 b:2, 16 partitions, no retries"
			}
			return ""
		}},
		{"redis+cluster://u:p%40ss@a:1", false, func(s *Server) string {
			if s.Cluster == nil || s.Cluster.Username != "u" || s.Cluster.Password != "p@ss" || s.Partitions != DefaultPartitions {
				return "want user u, password p@ss, default partitions"
			}
			return ""
		}},
		{"rediss+cluster://a:1", false, func(s *Server) string {
			if s.Cluster == nil || s.Cluster.TLSConfig == nil || s.Cluster.TLSConfig.ServerName != "a" {
				return "want TLS to a"
			}
			return ""
		}},
		{"redis+sentinel://:pw@s1:26379,s2:26379/main/3?sentinel_password=sp", false, func(s *Server) string {
			o := s.Sentinel
			if o == nil || o.MasterName != "main" || fmt.Sprint(o.SentinelAddrs) != "[s1:26379 s2:26379]" || o.DB != 3 ||
				o.Password != "pw" || o.SentinelPassword != "sp" {
				return "want master main on s1, s2, db 3, passwords pw and sp"
			}
			return ""
		}},
		{"redis+sentinel://s1:26379", true, nil},         // no master name
		{"redis+sentinel://s1:26379/m/x", true, nil},     // bad db
		{"redis+sentinel://s1:26379/m?foo=1", true, nil}, // unknown option
		{"redis+cluster://a:1/0", true, nil},             // a cluster has no db
		{"redis+cluster://a:1?partitions=0", true, nil},  // too few partitions
		{"redis+cluster://a:1?partitions=x", true, nil},  // not a number
		{"redis+cluster://", true, nil},                  // no address
		{"redis+cluster://a", true, nil},                 // no port
		{"redis+cluster://a:99999", true, nil},           // bad port
		{"redis+mesh://a:1", true, nil},                  // unknown scheme
		{"http://a:1", true, nil},                        // not redis
	}
	for _, tt := range tests {
		s, err := Parse(tt.url, "ringcast-n1", 2*time.Second)
		if (err != nil) != tt.wantErr {
			t.Errorf("parse %q: err = %v, want error %v", tt.url, err, tt.wantErr)
			continue
		}
		if err == nil {
			if why := tt.check(s); why != "" {
				t.Errorf("parse %q = %+v: %s", tt.url, s, why)
			}
		}
	}
	for _, u := range []string{"redis://a:1", "rediss+sentinel://a:1/m", "redis+cluster://a:1"} {
		if !IsURL(u) {
			t.Errorf("IsURL(%q) = false", u)
		}
	}
	for _, u := range []string{"mesh", "redis:/a", "redis-cluster://a:1"} {
		if IsURL(u) {
			t.Errorf("IsURL(%q) = true", u)
		}
	}
}
