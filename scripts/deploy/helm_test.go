package deploy

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The subset of Kubernetes objects the chart test reads.
type (
	object struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec spec              `yaml:"spec"`
		Data map[string]string `yaml:"data"`
	}
	spec struct {
		// Service
		ClusterIP                string `yaml:"clusterIP"`
		PublishNotReadyAddresses bool   `yaml:"publishNotReadyAddresses"`
		// StatefulSet, Deployment
		ServiceName         string `yaml:"serviceName"`
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		Replicas            int    `yaml:"replicas"`
		Template            struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		// PodDisruptionBudget
		MaxUnavailable *int `yaml:"maxUnavailable"`
		MinAvailable   *int `yaml:"minAvailable"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
		Containers                    []container `yaml:"containers"`
	}
	container struct {
		Command        []string `yaml:"command"`
		Env            []envVar `yaml:"env"`
		ReadinessProbe probe    `yaml:"readinessProbe"`
		LivenessProbe  probe    `yaml:"livenessProbe"`
		Lifecycle      struct {
			PreStop struct {
				Sleep struct {
					Seconds int `yaml:"seconds"`
				} `yaml:"sleep"`
			} `yaml:"preStop"`
		} `yaml:"lifecycle"`
		Resources struct {
			Requests map[string]string `yaml:"requests"`
		} `yaml:"resources"`
		SecurityContext struct {
			RunAsNonRoot           bool `yaml:"runAsNonRoot"`
			ReadOnlyRootFilesystem bool `yaml:"readOnlyRootFilesystem"`
		} `yaml:"securityContext"`
	}
	envVar struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	probe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
		} `yaml:"httpGet"`
	}
)

func (c container) env(name string) (envVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return envVar{}, false
}

// needHelm returns the helm binary (PATH, or where go install puts it) or
// skips the test.
func needHelm(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no helm (scripts/install-test-deps.sh installs it with go install): skipping the chart test")
	return ""
}

// render runs helm template on the chart and decodes every object.
func render(t *testing.T, helm, chart string, set ...string) (map[string]object, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"template", "rc", chart, "--namespace", "live", "--kube-version", "1.31.0"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := run(ctx, "", nil, helm, args...)
	if err != nil {
		return nil, err
	}
	objs := map[string]object{}
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var o object
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode helm template output: %v", err)
		}
		if o.Kind != "" {
			objs[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	return objs, nil
}

func TestHelmChart(t *testing.T) {
	helm := needHelm(t)
	chart := filepath.Join(repoRoot(t), "scripts/deploy/helm/ringcast")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := run(ctx, "", nil, helm, "lint", "--strict", chart, "--set", "clusterKey.value=k"); err != nil {
		t.Fatalf("helm lint: %v", err)
	} else {
		t.Logf("%s", out)
	}

	// Without a key the chart refuses to render: gossip must be encrypted.
	if _, err := render(t, helm, chart); err == nil || !strings.Contains(err.Error(), "clusterKey") {
		t.Errorf("helm template without a cluster key: %v, want an error naming clusterKey", err)
	}

	objs, err := render(t, helm, chart, "clusterKey.value=s3cret", "node.drainSeconds=20", "node.expectedConnections=10240")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for k := range objs {
		kinds = append(kinds, k)
	}
	want := []string{"Secret/rc-ringcast-cluster-key", "Service/rc-ringcast", "Service/rc-ringcast-node",
		"StatefulSet/rc-ringcast-node", "Deployment/rc-ringcast-balancer",
		"PodDisruptionBudget/rc-ringcast-node", "PodDisruptionBudget/rc-ringcast-balancer"}
	for _, k := range want {
		if _, ok := objs[k]; !ok {
			t.Errorf("rendered %v: no %s", kinds, k)
		}
	}
	if len(objs) != len(want) {
		t.Errorf("rendered %v, want exactly %v", kinds, want)
	}
	if got := objs["Secret/rc-ringcast-cluster-key"].Data["cluster-key"]; got != "czNjcmV0" {
		t.Errorf("secret cluster-key = %q, want base64 of s3cret", got)
	}

	headless := objs["Service/rc-ringcast-node"].Spec
	if headless.ClusterIP != "None" || !headless.PublishNotReadyAddresses {
		t.Errorf("node Service clusterIP %q publishNotReadyAddresses %v, want headless and publishing starting pods", headless.ClusterIP, headless.PublishNotReadyAddresses)
	}
	sts := objs["StatefulSet/rc-ringcast-node"].Spec
	if sts.ServiceName != "rc-ringcast-node" || sts.Replicas != 3 || sts.PodManagementPolicy != "Parallel" {
		t.Errorf("StatefulSet serviceName %q replicas %d policy %q, want rc-ringcast-node, 3, Parallel", sts.ServiceName, sts.Replicas, sts.PodManagementPolicy)
	}
	if p := objs["PodDisruptionBudget/rc-ringcast-node"].Spec.MaxUnavailable; p == nil || *p != 1 {
		t.Errorf("node PodDisruptionBudget maxUnavailable = %v, want 1", p)
	}

	for _, w := range []struct {
		name, cmd, readyz, healthz string
		pod                        podSpec
	}{
		{"node", "node", "/readyz", "/healthz", sts.Template.Spec},
		{"balancer", "balancer", "/readyz", "/healthz", objs["Deployment/rc-ringcast-balancer"].Spec.Template.Spec},
	} {
		if len(w.pod.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", w.name, len(w.pod.Containers))
		}
		c := w.pod.Containers[0]
		if len(c.Command) != 1 || c.Command[0] != w.cmd {
			t.Errorf("%s command %q, want [%s]", w.name, c.Command, w.cmd)
		}
		if c.ReadinessProbe.HTTPGet.Path != w.readyz || c.LivenessProbe.HTTPGet.Path != w.healthz {
			t.Errorf("%s probes: readiness %q liveness %q, want %s and %s", w.name, c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path, w.readyz, w.healthz)
		}
		if c.Lifecycle.PreStop.Sleep.Seconds <= 0 {
			t.Errorf("%s: no preStop sleep", w.name)
		}
		if !c.SecurityContext.RunAsNonRoot || !c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("%s security context %+v, want non-root and a read-only root", w.name, c.SecurityContext)
		}
		// Stable ids: the pod name.
		if id, _ := c.env("RINGCAST_ID"); id.Value != "$(POD_NAME)" {
			t.Errorf("%s RINGCAST_ID = %+v, want $(POD_NAME)", w.name, id)
		}
		if pn, _ := c.env("POD_NAME"); pn.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("%s POD_NAME = %+v, want the pod's metadata.name", w.name, pn)
		}
		if key, _ := c.env("RINGCAST_CLUSTER_KEY"); key.ValueFrom.SecretKeyRef.Name != "rc-ringcast-cluster-key" || key.ValueFrom.SecretKeyRef.Key != "cluster-key" {
			t.Errorf("%s RINGCAST_CLUSTER_KEY = %+v, want from Secret rc-ringcast-cluster-key", w.name, key)
		}
		if join, _ := c.env("RINGCAST_JOIN"); join.Value != "dns:rc-ringcast-node.live.svc.cluster.local:7946" {
			t.Errorf("%s RINGCAST_JOIN = %q, want the headless Service's name", w.name, join.Value)
		}
	}

	// The grace period covers the preStop sleep and the whole drain.
	node := sts.Template.Spec.Containers[0]
	drain, _ := node.env("RINGCAST_DRAIN")
	secs, err := strconv.Atoi(strings.TrimSuffix(drain.Value, "s"))
	if err != nil || secs != 20 {
		t.Fatalf("RINGCAST_DRAIN = %q, want 20s", drain.Value)
	}
	if g := sts.Template.Spec.TerminationGracePeriodSeconds; g <= secs+node.Lifecycle.PreStop.Sleep.Seconds {
		t.Errorf("terminationGracePeriodSeconds = %d, want more than preStop %d s + drain %d s", g, node.Lifecycle.PreStop.Sleep.Seconds, secs)
	}
	// Memory requests follow the expected connections: 32 MiB + 10 KiB each.
	if m := node.Resources.Requests["memory"]; m != "132Mi" {
		t.Errorf("node memory request = %q for 10240 connections, want 132Mi", m)
	}

	// An existing Secret: none is rendered, both components read it.
	objs, err = render(t, helm, chart, "clusterKey.existingSecret=prod-gossip", "clusterKey.secretKey=k")
	if err != nil {
		t.Fatal(err)
	}
	for k, o := range objs {
		if o.Kind == "Secret" {
			t.Errorf("with an existing secret the chart still renders %s", k)
		}
	}
	for _, k := range []string{"StatefulSet/rc-ringcast-node", "Deployment/rc-ringcast-balancer"} {
		key, _ := objs[k].Spec.Template.Spec.Containers[0].env("RINGCAST_CLUSTER_KEY")
		if ref := key.ValueFrom.SecretKeyRef; ref.Name != "prod-gossip" || ref.Key != "k" {
			t.Errorf("%s cluster key from %+v, want prod-gossip/k", k, ref)
		}
	}
}
