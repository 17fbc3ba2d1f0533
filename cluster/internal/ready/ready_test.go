package ready

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func node(name string, ready corev1.ConditionStatus) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: ready, Reason: "KubeletNotReady", Message: "CNI not initialized"},
		}},
	}
}

func deployment(ns, name string, want, available int32) *appsv1.Deployment {
	status := corev1.ConditionTrue
	if available < want {
		status = corev1.ConditionFalse
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:       appsv1.DeploymentSpec{Replicas: &want},
		Status: appsv1.DeploymentStatus{
			ObservedGeneration: 1, AvailableReplicas: available, UpdatedReplicas: want,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: status, Reason: "MinimumReplicasUnavailable"}},
		},
	}
}

func TestPending(t *testing.T) {
	web := []Deployment{{"apps", "web"}}
	cases := []struct {
		name    string
		objects []any
		want    string // "" = everything up; else a substring of the report
	}{
		{"ready node and available deployment", []any{node("n1", corev1.ConditionTrue), deployment("apps", "web", 1, 1)}, ""},
		{"no node", []any{deployment("apps", "web", 1, 1)}, "no node registered"},
		{"node not ready", []any{node("n1", corev1.ConditionFalse), deployment("apps", "web", 1, 1)}, "node n1 not Ready (KubeletNotReady: CNI not initialized)"},
		{"deployment not available", []any{node("n1", corev1.ConditionTrue), deployment("apps", "web", 2, 1)}, "deployment apps/web not Available (1/2 available: MinimumReplicasUnavailable"},
		{"deployment missing", []any{node("n1", corev1.ConditionTrue)}, "deployment apps/web not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client := fake.NewClientset()
			for _, o := range c.objects {
				switch o := o.(type) {
				case *corev1.Node:
					client.Tracker().Add(o)
				case *appsv1.Deployment:
					client.Tracker().Add(o)
				}
			}
			got := Pending(context.Background(), client, "", web)
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Fatalf("Pending = %q, want %q", got, c.want)
			}
		})
	}
}

func TestWaitTimesOutWithWhatIsPending(t *testing.T) {
	client := fake.NewClientset(node("n1", corev1.ConditionFalse))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if got := Wait(ctx, client, "n1", nil, 10*time.Millisecond); !strings.Contains(got, "node n1 not Ready") {
		t.Fatalf("Wait = %q", got)
	}
	// Control: the same wait on a Ready node returns at once with nothing pending.
	client = fake.NewClientset(node("n1", corev1.ConditionTrue))
	if got := Wait(context.Background(), client, "n1", nil, time.Hour); got != "" {
		t.Fatalf("Wait on a ready node = %q", got)
	}
}

func TestMainFlags(t *testing.T) {
	for _, args := range [][]string{
		{}, // no kubeconfig
		{"--kubeconfig", "k", "--deployments", "web"}, // no namespace
		{"--kubeconfig", "k", "--timeout", "0s"},
		{"--kubeconfig", "k", "extra"},
	} {
		var out, errOut bytes.Buffer
		if code := Main(args, &out, &errOut); code != 2 || out.Len() != 0 || errOut.Len() == 0 {
			t.Errorf("Main(%q) = %d, stdout %q, stderr %q; want 2 with an error", args, code, out.String(), errOut.String())
		}
	}
}

func TestMainTimeoutPrintsOneFatalLine(t *testing.T) {
	// A kubeconfig naming a server on a closed loopback port: the API server
	// never answers, so the command must time out with one FATAL line.
	dir := t.TempDir()
	kc := dir + "/kubeconfig"
	if err := writeFile(kc, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n"); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := Main([]string{"--kubeconfig", kc, "--timeout", "1s"}, &out, &errOut)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "cairn: FATAL cluster: API server not answering") {
		t.Fatalf("code %d, stdout %q", code, out.String())
	}
}

func writeFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }
